"""User-facing errors: which exception types mean bad input (reported as one line, never a traceback), and
one line from a third-party exception (transformers and open_clip explain a failure over many lines, the
first of which says what went wrong; user-facing errors quote only that)."""

from __future__ import annotations

import pickle


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def input_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad user input (their messages name the file, record or field).

    Imported on demand: the modules behind them pull in torch."""
    from topa_plugin.features.clip import ClipLoadError
    from topa_plugin.features.store import FeatureError
    from topa_plugin.features.validation import FeatureValueError
    from topa_plugin.features.video import VideoDecodeError
    from topa_plugin.lmms.feature_source import FeatureFileError
    from topa_plugin.lmms.taskdata import TaskDataError
    from topa_plugin.release.meta_llama import ConversionError
    from topa_plugin.textvid.backends import BackendError
    from topa_plugin.textvid.generate import GenerationError
    from topa_plugin.textvid.records import TextVidError
    from topa_plugin.training.resume import CheckpointError
    from topa_plugin.training.samples import DataError

    return (ClipLoadError, FeatureError, FeatureValueError, VideoDecodeError, FeatureFileError, TaskDataError,
            ConversionError, BackendError, GenerationError, TextVidError, CheckpointError, DataError,
            pickle.UnpicklingError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
