"""The ``lmms_eval.models`` entry point: registers model id ``topa`` with lmms-eval.

lmms-eval loads this module while ``lmms_eval.models`` is still initialising, so the module
itself imports nothing; ``MANIFEST`` is built on first access (PEP 562). A top-level
``from lmms_eval... import ModelManifest`` would, when this module is imported first, re-enter
lmms-eval's registry initialisation with a half-built module and silently drop ``topa``.
"""

from __future__ import annotations

MODEL_ID = "topa"
SIMPLE_CLASS_PATH = "topa_plugin.lmms.model.Topa"


def __getattr__(name: str):
    if name != "MANIFEST":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError as exc:
        raise ImportError("the lmms-eval model needs lmms-eval: pip install 'topa-plugin[eval]'") from exc
    manifest = ModelManifest(model_id=MODEL_ID, simple_class_path=SIMPLE_CLASS_PATH)
    globals()["MANIFEST"] = manifest
    return manifest
