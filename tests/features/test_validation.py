"""NaN/Inf and zero-norm frame features fail naming their source wherever features enter: the check itself,
release .npy files, the feature cache, a feature store, the Python API and lmms-eval's ``feature_dir``."""

from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.helpers.lmms_fixtures import FEATURE_DIM, build_topa_checkpoint
from topa_plugin.demo.toy import write_toy_video
from topa_plugin.features.store import FeatureError, FeatureStore
from topa_plugin.features.validation import FeatureValueError, check_frame_features
from topa_plugin.lmms.feature_source import (
    FeatureFileError,
    VideoFeatureSource,
    VideoSourceError,
    cache_key,
    load_feature_array,
)
from topa_plugin.utils.constants import MEMORY_FILE


def frames(n: int = 4, dim: int = 8) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("row", "value", "message"), [
    (1, float("nan"), r"src: frame\(s\) \[1\] hold NaN or infinite values"),
    (2, float("inf"), r"src: frame\(s\) \[2\] hold NaN or infinite values"),
    (3, 0.0, r"src: frame\(s\) \[3\] are zero vectors"),
])
def test_check_names_source_and_frames(row, value, message):
    good = frames()
    assert check_frame_features(good, "src") is good
    bad = good.clone()
    bad[row] = value if value == 0.0 else bad[row]
    if value != 0.0:
        bad[row, 5] = value
    with pytest.raises(FeatureValueError, match=message):
        check_frame_features(bad, "src")
    with pytest.raises(FeatureError, match=message):  # the caller's own error type
        check_frame_features(bad, "src", FeatureError)


def test_release_npy_with_nan_is_refused_naming_the_file(tmp_path):
    array = frames(dim=FEATURE_DIM).numpy()
    np.save(tmp_path / "ok.npy", array)
    assert torch.equal(load_feature_array(tmp_path / "ok.npy", FEATURE_DIM), torch.from_numpy(array))
    array[2, 0] = np.nan
    np.save(tmp_path / "vid.npy", array)
    with pytest.raises(FeatureFileError, match=rf"{tmp_path}/vid.npy: frame\(s\) \[2\] hold NaN"):
        load_feature_array(tmp_path / "vid.npy", FEATURE_DIM)


def test_feature_cache_entry_with_inf_is_refused_naming_the_entry(tmp_path):
    video = write_toy_video(tmp_path / "v.mp4", n_frames=6)
    encoder = SimpleNamespace(embed_dim=8, identity="test-encoder")  # never called: the entry is cached
    source = VideoFeatureSource(encoder, num_frames=4, cache_dir=tmp_path / "cache")
    entry = tmp_path / "cache" / f"{cache_key(video, encoder.identity, 4)}.safetensors"
    bad = frames()
    bad[0, 0] = float("inf")
    save_file({"features": bad}, str(entry))
    with pytest.raises(VideoSourceError, match=rf"{entry.name} \(feature cache entry; delete it\): frame\(s\) \[0\]"):
        source.get(video)


def test_store_features_with_nan_fail_naming_shard_and_record(tmp_path):
    from topa_plugin.features.writer import write_sharded

    values = {"a": torch.ones(2, 4), "b": torch.tensor([[1.0, 2.0, 3.0, 4.0], [float("nan"), 0.0, 0.0, 0.0]])}
    index = write_sharded(tmp_path / "store", {"kind": "test", "encoder": "random", "dim": 4}, list(values),
                          list(values), lambda keys: {k: values[k] for k in keys}, 10, dtype="float32")
    store = FeatureStore(index.parent)
    assert torch.equal(store.get("a"), values["a"])
    with pytest.raises(FeatureError, match=r"store/shard-\w+\.safetensors: record 'b': frame\(s\) \[1\] hold NaN"):
        store.get("b")
    with pytest.raises(FeatureError, match=r"store/shard-\w+\.safetensors: record 'b': frame\(s\) \[1\] hold NaN"):
        store.frames(["a", "b"])  # a run read at once names the record too (memory build)
    assert torch.equal(store.frames(["a", "a"]), torch.cat([values["a"]] * 2))


@pytest.fixture(scope="module")
def plugin_without_memory(tmp_path_factory, toy_llama_dir):
    """A TOPA directory like a `topa train` output: adapter, no memory bank."""
    out = build_topa_checkpoint(tmp_path_factory.mktemp("no_memory"), toy_llama_dir)
    (out / MEMORY_FILE).unlink()
    return out


def test_api_refuses_bad_frames_and_warns_once_without_memory(plugin_without_memory, caplog):
    from topa_plugin.modeling import TopaForCausalLM

    model = TopaForCausalLM.from_pretrained(plugin_without_memory)
    bad = frames(dim=FEATURE_DIM)
    bad[0] = 0
    with pytest.raises(FeatureValueError, match=r"video features: frame\(s\) \[0\] are zero vectors"):
        model.prepare_video(bad)
    bad[0, 0] = float("nan")
    with pytest.raises(FeatureValueError, match=r"video features: frame\(s\) \[0\] hold NaN"):
        model.score_choices(bad, "what happens", ["a cat", "a dog"])
    with caplog.at_level(logging.WARNING, logger="topa_plugin.modeling"):
        for _ in range(3):
            model.prepare_video(frames(dim=FEATURE_DIM))
        model.prepare_video(frames(dim=FEATURE_DIM), use_memory=False)
    warnings = [r.getMessage() for r in caplog.records if "no memory bank" in r.getMessage()]
    assert len(warnings) == 1
    assert str(plugin_without_memory) in warnings[0] and "memory=PATH" in warnings[0]
    model.memory = torch.nn.functional.normalize(torch.randn(16, FEATURE_DIM), dim=-1)
    assert not torch.equal(model.prepare_video(frames(dim=FEATURE_DIM)),
                           model.prepare_video(frames(dim=FEATURE_DIM), use_memory=False))


def test_lmms_feature_dir_with_nan_fails_naming_the_file(plugin_without_memory, toy_clip, tmp_path, caplog):
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from topa_plugin.lmms import task_utils
    from topa_plugin.lmms.model import Topa, TopaRequestError

    array = frames(n=5, dim=FEATURE_DIM).numpy()
    array[4, 1] = np.inf
    np.save(tmp_path / "ego-1.npy", array)
    checkpoint = shutil.copytree(plugin_without_memory, tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING, logger="topa_plugin.modeling"):
        lm = Topa(pretrained=str(checkpoint), clip_model=str(toy_clip[0]), clip_pretrained=str(toy_clip[1]),
                  device="cpu", feature_dir=str(tmp_path))
    assert any(str(checkpoint) in r.getMessage() and "no memory bank" in r.getMessage() for r in caplog.records)
    doc = {"video_idx": "ego-1", "question": "what happens", "option": [f"{c}. option {c}" for c in "ABCDE"]}
    lm.task_dict = {"t": {"test": [doc]}}
    request = Instance(request_type="generate_until", arguments=("", {}, task_utils.doc_to_visual, 0, "t", "test"),
                       idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})
    with pytest.raises(TopaRequestError, match=rf"task 't' doc 0: {tmp_path}/ego-1.npy: frame\(s\) \[4\] hold NaN"):
        lm.generate_until([request])
