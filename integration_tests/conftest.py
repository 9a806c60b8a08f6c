"""Every test here drives a real external tool (lmms-eval CLI, LLaVA trainer, launchers): mark it."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration_tests" in item.path.parts:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)
