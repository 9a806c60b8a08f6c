"""``lmms-eval --model topa`` with videos decoded ahead: same answers for any worker count and batch
size, failures that name task, doc and file, and a cached run that neither decodes nor loads CLIP."""

from __future__ import annotations

import multiprocessing

import pytest

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance

from tests.helpers.lmms_fixtures import OPTIONS, shown, write_garbage_video
from topa_plugin.demo.toy import write_toy_video
from topa_plugin.lmms import task_utils
from topa_plugin.lmms.model import Topa, TopaRequestError


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefetch_videos")
    videos = [write_toy_video(root / f"v{i}.mp4", n_frames=8 + 5 * i, seed=i) for i in range(5)]
    mc = [{"video_path": str(v), "ctx": shown(f"what does c do in part {i}", OPTIONS)} for i, v in enumerate(videos)]
    free = [{"video_path": str(videos[i]), "ctx": f"where is c in scene {i}?"} for i in (3, 0, 4)]
    return [mc[0], free[0], mc[1], mc[2], free[1], mc[3], free[2], mc[4], mc[0]]


def topa(checkpoint, toy_clip, **kwargs):
    config, weights = toy_clip
    return Topa(pretrained=str(checkpoint), clip_model=str(config), clip_pretrained=str(weights), device="cpu", **kwargs)


def generate(lm, docs):
    lm.task_dict = {"t": {"test": docs}}
    requests = [Instance("generate_until", (d.get("ctx", ""), {"max_new_tokens": 6}, task_utils.doc_to_visual, i, "t",
                                            "test"), idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1})
                for i, d in enumerate(docs)]
    return lm.generate_until(requests)


def test_answers_do_not_depend_on_workers_or_batch_size(checkpoint, toy_clip, docs):
    answers = {(workers, batch): generate(topa(checkpoint, toy_clip, decode_workers=workers, batch_size=batch), docs)
               for workers, batch in [(0, 1), (1, 3), (3, 2)]}
    first = answers[(0, 1)]
    assert all(a == first for a in answers.values()), answers
    assert sum(a in "ABCDE" for a in first) == 6 and len(first) == len(docs)
    assert not multiprocessing.active_children()


def test_broken_video_fails_the_run_naming_task_doc_and_file(checkpoint, toy_clip, docs, tmp_path):
    broken = write_garbage_video(tmp_path / "broken.mp4")
    bad = [*docs[:3], {"video_path": str(broken), "ctx": shown("q", OPTIONS)}, *docs[3:]]
    lm = topa(checkpoint, toy_clip, decode_workers=2, batch_size=2)
    with pytest.raises(TopaRequestError, match=r"task 't' doc 3: .*broken\.mp4"):
        generate(lm, bad)
    assert not multiprocessing.active_children()


def test_cached_run_decodes_nothing_and_loads_no_clip(checkpoint, toy_clip, docs, tmp_path, monkeypatch):
    first = topa(checkpoint, toy_clip, decode_workers=1, batch_size=2, feature_cache=str(tmp_path))
    answers = generate(first, docs)
    assert dict(first.features.counts) == {"decoded": 5, "reused": 4}  # 9 requests, 5 videos

    from topa_plugin.features import clip

    def no_clip(*args, **kwargs):
        raise AssertionError("CLIP loaded on a fully cached run")

    monkeypatch.setattr(clip, "load_clip", no_clip)
    again = topa(checkpoint, toy_clip, decode_workers=1, batch_size=2, feature_cache=str(tmp_path))
    assert generate(again, docs) == answers
    assert dict(again.features.counts) == {"cached": 5, "reused": 4}
