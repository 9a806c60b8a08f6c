"""``topa_plugin.ask``: answers equal to lmms-eval's ``topa`` model on the same video and prompt, the frames it
saw, their nearest memory rows and coverage, ``.npy`` features, free generation, threads, and bad input."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from tests.helpers.lmms_fixtures import OPTIONS, ROWS, build_topa_checkpoint, shown, write_garbage_video
from topa_plugin.ask import Answer, Asker, AskError, ask
from topa_plugin.demo.toy import write_toy_video
from topa_plugin.features.memory import coverage_threshold
from topa_plugin.features.transforms import l2_normalize
from topa_plugin.features.video import uniform_indices
from topa_plugin.utils.errors import TopaInputError

TEXTS = [o.split(". ", 1)[1] for o in OPTIONS]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("ask")


@pytest.fixture(scope="module")
def checkpoint(root, toy_llama_dir):
    return build_topa_checkpoint(root / "checkpoint", toy_llama_dir)


@pytest.fixture(scope="module")
def videos(root):
    # 24 and 30 frames are sampled down to 10; 5 frames fill 5 slots and leave 5 zero slots
    return [write_toy_video(root / f"v{i}.mp4", n_frames=n, seed=40 + i) for i, n in enumerate((24, 30, 5))]


@pytest.fixture(scope="module")
def clip_kwargs(toy_clip):
    return {"clip_model": str(toy_clip[0]), "clip_pretrained": str(toy_clip[1]), "device": "cpu"}


@pytest.fixture(scope="module")
def asker(checkpoint, clip_kwargs):
    return Asker.from_pretrained(checkpoint, **clip_kwargs)


@pytest.fixture(scope="module")
def lm(checkpoint, clip_kwargs):
    """lmms-eval's ``topa`` model, as ``lmms-eval --model topa`` builds it (no cache, decoding inline)."""
    pytest.importorskip("lmms_eval")
    from topa_plugin.lmms.model import Topa

    return Topa(pretrained=str(checkpoint), batch_size=1, decode_workers=0, **clip_kwargs)


def lmms_answers(lm, videos, rows):
    """(generate_until replies, loglikelihood losses per option) of lmms-eval's model for each video and
    (question, option texts) row: the EgoSchema task prompt, and the mcppl variant's continuations."""
    from lmms_eval.api.instance import Instance, unwrap_generation_output

    from topa_plugin.lmms import task_utils

    def request(kind, args, doc_id, idx=0):
        return Instance(request_type=kind, arguments=args, idx=idx, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})

    lm.task_dict = {"t": {"test": [{"video_path": str(v)} for v in videos]}}
    replies = lm.generate_until([request("generate_until", (shown(q, lettered(texts)), {}, task_utils.doc_to_visual, i, "t", "test"), i)
                                 for i, (q, texts) in enumerate(rows)])
    reqs = [request("loglikelihood", (q, f" {text}", task_utils.doc_to_visual, i, "t", "test"), i, idx=j)
            for i, (q, texts) in enumerate(rows) for j, text in enumerate(texts)]
    losses = [float(unwrap_generation_output(r)[0][0]) for r in lm.loglikelihood(reqs)]
    return replies, [losses[i * 5:(i + 1) * 5] for i in range(len(rows))]


def lettered(texts):
    return [f"{chr(ord('A') + i)}. {t}" for i, t in enumerate(texts)]


def test_answers_and_scores_are_those_of_lmms_evals_topa_model(asker, lm, videos):
    rows = [(q, texts) for q, texts, _ in ROWS[:len(videos)]]
    replies, losses = lmms_answers(lm, videos, rows)
    answers = [asker.ask(v, q, lettered(texts)) for v, (q, texts) in zip(videos, rows)]
    assert [a.label for a in answers] == replies
    assert len({a.answer_index for a in answers}) > 1, "the fixture must discriminate between videos"
    for answer, expected, (_, texts) in zip(answers, losses, rows):
        assert answer.scores == pytest.approx(expected, abs=1e-5)
        assert answer.options == texts and answer.answer == texts[answer.answer_index]
        assert answer.answer_index == int(np.argmin(expected))
    # the whole task prompt as the question: its options are read from it, as lmms-eval reads them
    whole = asker.ask(videos[0], shown(rows[0][0], lettered(rows[0][1])))
    assert (whole.label, whole.scores) == (answers[0].label, answers[0].scores)
    # unlabelled options are the same options
    assert asker.ask(videos[0], rows[0][0], rows[0][1]).scores == answers[0].scores


def test_frames_are_the_sampled_ones_with_their_video_index_and_time(asker, lm, videos):
    long, _, short = (asker.ask(v, "what happens?", TEXTS[:3]) for v in videos)
    assert [f.index for f in long.frames] == uniform_indices(24, 10).tolist()
    assert [f.timestamp for f in long.frames] == pytest.approx([i / 8 for i in uniform_indices(24, 10)])  # 8 fps
    assert [f.index for f in short.frames] == [0, 1, 2, 3, 4] and short.padded_slots == 5
    assert all(img.dtype == np.uint8 and img.shape == (64, 64, 3) for img in long.images)
    assert len(long.images) == len(long.frames)
    # the decoded thumbnails are the frames lmms-eval encodes
    from topa_plugin.features.video import read_frames

    assert np.array_equal(np.stack(long.images), read_frames(videos[0], 10))


def test_neighbours_and_coverage_are_cosines_to_the_memory(asker, lm, videos):
    answer = asker.ask(videos[1], "what happens?", TEXTS[:2])
    memory = asker.model.memory.float()
    frames = l2_normalize(lm.features.get(videos[1]).float())
    cosines = frames @ memory.T
    best = cosines.topk(3, dim=1)
    threshold = coverage_threshold(asker.model.memory)
    assert answer.coverage_threshold == threshold
    for frame, values, rows in zip(answer.frames, best.values, best.indices):
        assert [n.row for n in frame.neighbors] == rows.tolist()
        assert [n.cosine for n in frame.neighbors] == pytest.approx(values.tolist(), abs=1e-5)
        assert frame.coverage == pytest.approx(float(values[0]), abs=1e-5)
        assert frame.low_coverage == (frame.coverage < threshold)
        assert all(n.text is None and n.tideo is None for n in frame.neighbors)  # no provenance beside this memory
    assert "memory.safetensors has no memory.provenance.jsonl" in answer.provenance_note


def test_npy_features_are_read_as_lmms_evals_feature_dir(asker, lm, videos, root):
    raw = lm.features.get(videos[0]) * 3.0  # unnormalised, as a release .npy may be
    np.save(root / "feat.npy", raw.numpy())
    from_npy = asker.ask(root / "feat.npy", "what happens?", TEXTS)
    from_video = asker.ask(videos[0], "what happens?", TEXTS)
    assert from_npy.scores == pytest.approx(from_video.scores, abs=1e-5)
    assert [f.index for f in from_npy.frames] == list(range(10)) and from_npy.images is None
    assert all(f.timestamp is None for f in from_npy.frames)
    np.save(root / "wide.npy", np.ones((4, 8), np.float32))
    with pytest.raises(TopaInputError, match=r"wide.npy: expected features of shape \[T>=1, 768\]"):
        asker.ask(root / "wide.npy", "q", TEXTS)


def test_without_options_the_answer_is_generated_as_lmms_eval_generates(asker, lm, videos):
    answer = asker.ask(videos[0], "what is c doing?")
    expected = lm.model.generate_answer(lm.features.get(videos[0]), "what is c doing?")
    assert (answer.answer_index, answer.scores, answer.label, answer.answer) == (None, [], None, expected)
    assert answer.prompt.endswith("Question: What is c doing?\nAnswer:")
    assert "<video: 10 frame slots>" in answer.prompt


def test_prompt_is_the_text_the_model_tokenises(asker, videos):
    answer = asker.ask(videos[0], "Question: what is c doing", ["A. cooks", "B. sleeps"])
    assert answer.prompt == ("Instruction: Choose the correct answer based on the video and question.\n"
                             "Video:<video: 10 frame slots>\nQuestion: What is c doing?\nChoices: \n(A) cooks\n(B) sleeps\n"
                             "Answer: The correct choice is")
    processor = asker.model.processor
    template = processor.multiple_choice_template("what is c doing", ["cooks", "sleeps"], None)
    ids = processor.build(template).input_ids
    head, rest = answer.prompt.split("<video: 10 frame slots>")
    assert rest.startswith("\n")  # the newline token after the slots, then the text part
    assert ids == ([processor.bos_id] + processor.encode_text(head) + [processor.placeholder_id] * 10
                   + [processor.newline_id] + processor.encode_text(rest[1:]))


def test_json_has_the_documented_fields_and_no_images(asker, videos):
    answer = asker.ask(videos[0], "what happens?", TEXTS, answer="C")
    data = json.loads(json.dumps(answer.to_json()))
    assert {"answer_index", "answer", "scores", "frames", "prompt", "label", "correct_index"} <= set(data)
    assert "images" not in data and data["correct_index"] == 2
    assert set(data["frames"][0]) == {"index", "timestamp", "coverage", "low_coverage", "neighbors"}
    assert set(data["frames"][0]["neighbors"][0]) == {"row", "cosine", "text", "tideo", "frame"}
    assert asker.ask(videos[0], "what happens?", TEXTS, answer=1).correct_index == 1
    assert asker.ask(videos[0], "what happens?", TEXTS, answer="(D)").correct_index == 3


def test_one_shot_function_and_threads_agree_with_one_asker(asker, checkpoint, clip_kwargs, videos):
    expected = [asker.ask(v, "what happens?", TEXTS).scores for v in videos]
    assert ask(videos[1], "what happens?", TEXTS, checkpoint=checkpoint, **clip_kwargs).scores == expected[1]
    got: dict[int, list[float]] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, asker.ask(videos[i % 3], "what happens?", TEXTS).scores))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(6)] == expected * 2
    assert isinstance(asker.ask(videos[0], "q", TEXTS[:2]), Answer)


@pytest.mark.parametrize("video, question, options, answer, message", [
    ("missing.mp4", "q", TEXTS, None, r"video .*missing.mp4: file not found"),
    ("v0.mp4", "  ", TEXTS, None, r"question: empty"),
    ("v0.mp4", "q", ["only one"], None, r"options: only one \('only one'\)"),
    ("v0.mp4", "q", ["a", ""], None, r"options: an option is empty"),
    ("v0.mp4", "q", TEXTS, "F", r"answer: 'F' is neither an option label \(A, B, C, D, E\) nor an index 0..4"),
    ("v0.mp4", "q", (), "A", r"answer: given, but there are no options"),
])
def test_bad_questions_fail_naming_the_field(asker, root, videos, video, question, options, answer, message):
    with pytest.raises(AskError, match=message):
        asker.ask(root / video, question, options, answer=answer)


def test_undecodable_video_fails_naming_it(asker, root):
    bad = write_garbage_video(root / "garbage.mp4")
    with pytest.raises(TopaInputError, match=rf"{bad}: cannot decode video"):
        asker.ask(bad, "q", TEXTS)


def test_a_folder_that_is_not_a_checkpoint_is_refused(root, clip_kwargs):
    (root / "empty").mkdir()
    with pytest.raises(AskError, match=r"checkpoint .*empty: no config.json, so not a TOPA plugin directory"):
        Asker.from_pretrained(root / "empty", **clip_kwargs)
    with pytest.raises(AskError, match=r"checkpoint .*nowhere: folder not found"):
        Asker.from_pretrained(root / "nowhere", **clip_kwargs)
