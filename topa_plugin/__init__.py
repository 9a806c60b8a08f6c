"""topa-plugin: TOPA (Text-Only Pre-Alignment) for lmms-eval and LLaVA.

The public API is imported lazily so that ``import topa_plugin`` (which lmms-eval does for
every run through the entry point) costs nothing until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from topa_plugin.quantization import quiet_optional_kernel_notice
from topa_plugin.version import __version__

# Before anything imports bitsandbytes (transformers -> peft does): its optional-kernel notice is not ours to print.
quiet_optional_kernel_notice()

_EXPORTS = {
    "TopaConfig": "topa_plugin.configuration",
    "TopaForCausalLM": "topa_plugin.modeling",
    "QuantizationSettings": "topa_plugin.quantization",
    "TopaProcessor": "topa_plugin.processing",
    "TopaPrompt": "topa_plugin.processing",
    "sample_frames": "topa_plugin.features.transforms",
    "project_to_memory": "topa_plugin.features.memory",
    "load_memory": "topa_plugin.features.memory",
    "save_memory": "topa_plugin.features.memory",
    "load_clip": "topa_plugin.features.clip",
    "read_frames": "topa_plugin.features.video",
    "FeatureStore": "topa_plugin.features.store",
    "extract_textvid": "topa_plugin.features.extract",
    "extract_videos": "topa_plugin.features.extract",
    "build_memory": "topa_plugin.features.memory",
    "sample_path": "topa_plugin.textvid",
    "load_release_pickle": "topa_plugin.utils.safeload",
    "convert_official": "topa_plugin.release.convert",
    "TextVidRecord": "topa_plugin.textvid.records",
    "read_textvid": "topa_plugin.textvid.reader",
    "quality_report": "topa_plugin.textvid.quality",
    "dedup_file": "topa_plugin.textvid.near_duplicates",
    "balance_file": "topa_plugin.textvid.balance",
    "caption_video": "topa_plugin.captioning",
    "ask": "topa_plugin.ask",
    "Asker": "topa_plugin.ask",
    "Answer": "topa_plugin.ask",
    "read_lmms_run": "topa_plugin.lmms.run_report",
    "write_run_report": "topa_plugin.pages.run_report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'topa_plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover - static names for IDEs and type checkers
    from topa_plugin.ask import Answer, Asker, ask
    from topa_plugin.captioning import caption_video
    from topa_plugin.configuration import TopaConfig
    from topa_plugin.features.clip import load_clip
    from topa_plugin.features.extract import extract_textvid, extract_videos
    from topa_plugin.features.memory import build_memory, load_memory, project_to_memory, save_memory
    from topa_plugin.features.store import FeatureStore
    from topa_plugin.features.transforms import sample_frames
    from topa_plugin.features.video import read_frames
    from topa_plugin.lmms.run_report import read_lmms_run
    from topa_plugin.modeling import TopaForCausalLM
    from topa_plugin.pages.run_report import write_run_report
    from topa_plugin.processing import TopaProcessor, TopaPrompt
    from topa_plugin.quantization import QuantizationSettings
    from topa_plugin.release.convert import convert_official
    from topa_plugin.textvid import sample_path
    from topa_plugin.textvid.balance import balance_file
    from topa_plugin.textvid.near_duplicates import dedup_file
    from topa_plugin.textvid.quality import quality_report
    from topa_plugin.textvid.reader import read_textvid
    from topa_plugin.textvid.records import TextVidRecord
    from topa_plugin.utils.safeload import load_release_pickle
