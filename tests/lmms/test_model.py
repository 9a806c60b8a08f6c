"""The lmms-eval ``topa`` model class called directly: routing, result shapes and every error case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance, unwrap_generation_output

from tests.helpers.lmms_fixtures import (
    FEATURE_DIM,
    OPTIONS,
    build_topa_checkpoint,
    shown,
    write_garbage_video,
    write_zero_frame_video,
)
from topa_plugin.demo.toy import write_toy_video
from topa_plugin.lmms import task_utils
from topa_plugin.lmms.model import Topa, TopaRequestError
from topa_plugin.lmms.request_log import RequestLog


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms_videos")
    return [write_toy_video(root / f"vid{i}.mp4", n_frames=n, seed=i) for i, n in enumerate((12, 20, 6))]


@pytest.fixture(scope="module")
def lm(checkpoint, toy_clip, tmp_path_factory):
    config, weights = toy_clip
    return Topa(pretrained=str(checkpoint), clip_model=str(config), clip_pretrained=str(weights), device="cpu",
                batch_size=2, feature_cache=str(tmp_path_factory.mktemp("lmms_cache")))


def request(kind, args, doc_id, idx=0, task="t"):
    return Instance(request_type=kind, arguments=args, idx=idx, metadata={"task": task, "doc_id": doc_id, "repeats": 1})


def generate(lm, docs, ctx="", gen_kwargs=None):
    lm.task_dict = {"t": {"test": docs}}
    reqs = [request("generate_until", (ctx or d.get("ctx", ""), gen_kwargs or {}, task_utils.doc_to_visual, i, "t", "test"), i)
            for i, d in enumerate(docs)]
    return lm.generate_until(reqs)


def best_letter(lm, video, question, texts):
    return "ABCDE"[int(lm.model.score_choices(lm.features.get(video), question, texts).argmin())]


def test_generate_until_ranks_the_options_the_prompt_shows_like_score_choices(lm, videos):
    texts = [o.split(". ", 1)[1] for o in OPTIONS]
    docs = [{"video_path": str(v), "question": "ignored", "option": OPTIONS, "ctx": shown(f"what does c do in part {i}", OPTIONS)}
            for i, v in enumerate(videos)]
    # no option list in the doc: the prompt alone says what the options are
    docs.append({"video_path": str(videos[0]), "ctx": "what does c do?\n" + "\n".join(f"({o[0]}) {o[3:]}" for o in OPTIONS)
                 + "\nAnswer with the option's letter."})
    answers = generate(lm, docs)
    expected = [best_letter(lm, v, f"what does c do in part {i}", texts) for i, v in enumerate(videos)]
    expected.append(f"({best_letter(lm, videos[0], 'what does c do?', texts)})")
    assert answers == expected


@pytest.mark.parametrize("labels, reply", [
    (["1. ", "2. ", "3. "], lambda i: str(i + 1)),
    (["Caption A: ", "Caption B: ", "Caption C: "], lambda i: f"Caption {'ABC'[i]}"),
    (["Sentence 1: ", "Sentence 2: ", "Sentence 3: "], lambda i: f"Sentence {i + 1}"),
])
def test_replies_use_the_prompts_label_style(lm, videos, labels, reply):
    texts = ["the U.S. flag is raised", "a dog runs", "nothing happens"]
    lines = "\n".join(label + t for label, t in zip(labels, texts))
    ctx = f"Which one matches the video?\n{lines}\nPlease directly give the best option:"
    [answer] = generate(lm, [{"video_path": str(videos[1])}], ctx=ctx)
    scores = lm.model.score_choices(lm.features.get(videos[1]), "Which one matches the video?", texts)
    assert answer == reply(int(scores.argmin()))


def test_a_prompt_without_options_is_answered_by_generation_even_if_the_doc_has_options(lm, videos):
    doc = {"video_path": str(videos[2]), "question": "What colour is the flag?", "options": ["A. Red", "B. Blue"]}
    ctx = "What colour is the flag?\nPlease answer the question with a short answer."
    [answer] = generate(lm, [doc], ctx=ctx, gen_kwargs={"max_new_tokens": 5})
    assert answer == lm.model.generate_answer(lm.features.get(videos[2]), ctx, max_new_tokens=5)


def test_several_option_blocks_that_the_doc_does_not_resolve_fail_naming_the_doc(lm, videos):
    ctx = "Subtitles:\nA. hello\nB. bye\nWhat colour?\nA. Red\nB. Blue"
    with pytest.raises(TopaRequestError, match="task 't' doc 0: the prompt shows 2 option blocks"):
        generate(lm, [{"video_path": str(videos[0])}], ctx=ctx)
    [answer] = generate(lm, [{"video_path": str(videos[0]), "options": ["Red", "Blue"]}], ctx=ctx)
    assert answer in ("A", "B")


def test_request_log_records_what_was_ranked_and_generated(lm, videos, tmp_path, monkeypatch):
    monkeypatch.setattr(lm, "requests", RequestLog(str(tmp_path / "requests.jsonl")))
    docs = [{"video_path": str(videos[0]), "ctx": shown("Question:what does c do?", OPTIONS)},
            {"video_path": str(videos[1]), "ctx": "Describe the video."}]
    answers = generate(lm, docs, gen_kwargs={"max_new_tokens": 3})
    records = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    ranked, generated = sorted(records, key=lambda r: r["doc_id"])
    assert ranked["mode"] == "rank" and ranked["question"] == "what does c do?"
    assert ranked["options"] == [o.split(". ", 1)[1] for o in OPTIONS]
    assert ranked["reply"] == answers[0] == "ABCDE"[ranked["chosen"]]
    assert len(ranked["losses"]) == 5 and min(range(5), key=ranked["losses"].__getitem__) == ranked["chosen"]
    assert (generated["mode"], generated["reply"], generated["doc_id"]) == ("generate", answers[1], 1)
    assert "options" not in generated


def test_caption_mode_release_captions_prompts_without_options(lm, videos, monkeypatch):
    from topa_plugin.captioning import PROTOCOLS, caption_video

    monkeypatch.setattr(lm, "caption_protocol", PROTOCOLS["vatex"])
    docs = [{"video_path": str(videos[0]), "ctx": "Provide a one-sentence caption for the provided video."},
            {"video_path": str(videos[1]), "ctx": shown("what does c do?", OPTIONS)}]
    caption, letter = generate(lm, docs)
    assert caption == caption_video(lm.model, lm.features.get(videos[0]), "vatex")
    assert letter in "ABCDE"  # options shown are still ranked


def test_mc_mode_generate_answers_freely_with_the_generation_limits(lm, videos, monkeypatch):
    monkeypatch.setattr(lm, "mc_mode", "generate")
    doc = {"video_path": str(videos[1]), "question": "q", "option": OPTIONS}
    ctx = "What does c do?\n" + "\n".join(OPTIONS)
    [answer] = generate(lm, [doc], ctx=ctx, gen_kwargs={"max_new_tokens": 4, "until": ["\n"]})
    features = lm.features.get(videos[1])
    assert answer == lm.model.generate_answer(features, ctx, max_new_tokens=4, until=["\n"])
    # the limit reached generate_answer: without it the (toy) model keeps going
    assert len(lm.model.generate_answer(features, ctx, max_new_tokens=32)) > len(answer)


def test_loglikelihood_scores_a_docs_options_together_and_survives_unwrapping(lm, videos):
    question, texts = "what does c do", [o.split(". ", 1)[1] for o in OPTIONS]
    lm.task_dict = {"t": {"test": [{"video_path": str(v)} for v in videos[:2]]}}
    reqs = [request("loglikelihood", (question, f" {texts[i]}", task_utils.doc_to_visual, doc, "t", "test"), doc, idx=i)
            for doc in (0, 1) for i in (3, 0, 4, 1, 2)]  # any order
    out = lm.loglikelihood(reqs)
    for req, result in zip(reqs, out):
        value, _ = unwrap_generation_output(result)  # lmms-eval 0.7.3 stringifies bare tuples here
        loss, greedy = value
        scores = lm.model.score_choices(lm.features.get(videos[req.doc_id]), question, texts)
        assert loss == pytest.approx(float(scores[req.idx]))
        assert greedy == (req.idx == int(scores.argmin()))


def test_single_continuation_is_the_mean_nll_of_the_open_ended_answer(lm, videos):
    lm.task_dict = {"t": {"test": [{"video_path": str(videos[2])}]}}
    [result] = lm.loglikelihood([request("loglikelihood", ("what is on the table", " a cup", task_utils.doc_to_visual, 0, "t", "test"), 0)])
    loss, greedy = result.text
    prompt = lm.model.processor.encode_open_ended("what is on the table", "a cup")
    video = lm.model.prepare_video(lm.features.get(videos[2]))[None]
    with torch.no_grad():
        logits = lm.model(torch.tensor([prompt.input_ids]), video, prompt.video_start).logits[0, :-1]
    targets = torch.tensor(prompt.labels[1:])
    scored = targets != -100
    nll = -torch.log_softmax(logits[scored].float(), -1).gather(-1, targets[scored, None])
    assert loss == pytest.approx(float(nll.mean()), rel=1e-5)
    assert greedy == bool((logits[scored].argmax(-1) == targets[scored]).all())


def test_precomputed_features_replace_decoding(lm, tmp_path, monkeypatch):
    features = np.random.default_rng(0).standard_normal((7, FEATURE_DIM)).astype(np.float32)
    np.save(tmp_path / "ego-42.npy", features)
    monkeypatch.setattr(lm.features, "feature_dir", tmp_path)
    before = dict(lm.features.counts)
    doc = {"video_idx": "ego-42", "video_path": str(tmp_path / "absent.mp4"), "ctx": shown("what happens", OPTIONS)}
    [answer] = generate(lm, [doc])
    scores = lm.model.score_choices(torch.from_numpy(features), "what happens", [o[3:] for o in OPTIONS])
    assert answer == "ABCDE"[int(scores.argmin())]
    assert lm.features.counts["precomputed"] == before.get("precomputed", 0) + 1
    assert lm.features.counts["decoded"] == before.get("decoded", 0)

    np.save(tmp_path / "ego-43.npy", features[:, :32])
    with pytest.raises(TopaRequestError, match=rf"task 't' doc 0: {tmp_path}/ego-43.npy: "
                       rf"expected features of shape \[T>=1, {FEATURE_DIM}\]"):
        generate(lm, [dict(doc, video_idx="ego-43")])


def test_feature_cache_is_keyed_by_content_not_path(lm, tmp_path):
    path = write_toy_video(tmp_path / "same_name.mp4", n_frames=9, seed=5)
    counts = lm.features.counts
    decoded, cached = counts["decoded"], counts["cached"]
    first = lm.features.get(path)
    write_toy_video(path, n_frames=9, seed=6)  # replaced in place
    second = lm.features.get(path)
    assert counts["decoded"] == decoded + 2 and counts["cached"] == cached
    assert not torch.equal(first, second)
    write_toy_video(path, n_frames=9, seed=5)
    assert torch.equal(lm.features.get(path), first)
    assert counts["cached"] == cached + 1


@pytest.mark.parametrize("case", ["missing", "garbage", "zero_frames", "sys_exit", "two_videos"])
def test_bad_videos_raise_naming_task_doc_and_file(lm, tmp_path, case):
    def exits(doc):
        raise SystemExit(f"video path:{doc['video_path']} does not exist, please check")

    path = tmp_path / f"{case}.mp4"
    doc_to_visual = task_utils.doc_to_visual
    if case == "garbage":
        write_garbage_video(path)
        message = f"{path}: cannot decode video"
    elif case == "zero_frames":
        write_zero_frame_video(path)
        message = f"{path}: "  # the reader's wording may vary; doc and file must be named
    elif case == "missing":
        message = f"video not found \\(tried {path}\\)"
    elif case == "sys_exit":
        doc_to_visual, message = exits, f"video path:{path} does not exist"
    else:
        doc_to_visual, message = (lambda doc: [str(path), str(path)]), "exactly one video path per doc"
    lm.task_dict = {"t": {"test": [{"video_path": "unused"}, {"video_path": str(path), "question": "q", "option": OPTIONS}]}}
    req = request("generate_until", ("q", {}, doc_to_visual, 1, "t", "test"), 1)
    with pytest.raises(TopaRequestError, match=f"task 't' doc 1: .*{message}"):
        lm.generate_until([req])


def test_loglikelihood_request_without_video_is_refused(lm):
    with pytest.raises(TopaRequestError, match="without a video"):
        lm.loglikelihood([request("loglikelihood", ("", "choice"), 3)])


def test_checkpoint_and_clip_feature_dims_must_agree(toy_llama_dir, toy_clip, tmp_path):
    config, weights = toy_clip
    small = build_topa_checkpoint(tmp_path / "ckpt32", toy_llama_dir, feature_dim=32)
    with pytest.raises(ValueError, match=rf"gives {FEATURE_DIM}-d features, but the checkpoint {small}/config.json expects feature_dim=32"):
        Topa(pretrained=str(small), clip_model=str(config), clip_pretrained=str(weights), device="cpu")


def test_memory_override_must_match_the_checkpoint(checkpoint, toy_clip, tmp_path):
    from topa_plugin.features.memory import save_memory

    config, weights = toy_clip
    memory = save_memory(torch.nn.functional.normalize(torch.randn(8, 32), dim=-1), tmp_path / "memory.safetensors")
    with pytest.raises(ValueError, match=f"{memory}: memory rows have dim 32, the checkpoint .* expects {FEATURE_DIM}"):
        Topa(pretrained=str(checkpoint), clip_model=str(config), clip_pretrained=str(weights), device="cpu", memory=str(memory))


@pytest.mark.parametrize("args, message", [
    ({"mc_mode": "vote"}, "mc_mode='vote'"),
    ({"batch_size": "auto"}, "batch_size='auto'"),
    ({"max_batch_size": 8}, "max_batch_size"),
    ({"dtype": "int8"}, "dtype='int8'"),
    ({"caption_mode": "paper"}, "caption_mode='paper'"),
    ({"caption_mode": "release", "caption_protocol": "coco"}, "unknown caption protocol 'coco'"),
    ({"quantization": "3bit"}, "quantization='3bit' does not exist; use one of: 8bit, 4bit or none"),
    ({"quantization": "4bit", "quant_type": "int4"}, "quant_type='int4' does not exist"),
    ({"quantization": "4bit", "double_quant": "maybe"}, "expected true or false, got 'maybe'"),
])
def test_bad_model_args_are_rejected(checkpoint, toy_clip, args, message):
    config, weights = toy_clip
    with pytest.raises(ValueError, match=message):
        Topa(pretrained=str(checkpoint), clip_model=str(config), clip_pretrained=str(weights), device="cpu", **args)


def test_video_content_is_hashed_once_until_the_file_changes(tmp_path, monkeypatch):
    from topa_plugin.lmms import feature_source

    hashed = []
    monkeypatch.setattr(feature_source, "file_sha256", lambda path: hashed.append(path) or f"h{len(hashed)}")
    feature_source._digest.cache_clear()
    video = write_toy_video(tmp_path / "v.mp4", n_frames=6, seed=0)
    first = feature_source.cache_key(video, "enc", 8)
    assert feature_source.cache_key(tmp_path / "." / "v.mp4", "enc", 8) == first and len(hashed) == 1
    write_toy_video(video, n_frames=7, seed=1)  # replaced in place: new size / mtime
    assert feature_source.cache_key(video, "enc", 8) != first and len(hashed) == 2
    feature_source._digest.cache_clear()


def test_loglikelihood_requests_with_different_contexts_are_not_one_question(lm, videos):
    """Options are grouped per doc AND context: a second context is its own open-ended question,
    not another option of the first."""
    lm.task_dict = {"t": {"test": [{"video_path": str(videos[0])}]}}
    pairs = [("what does c do", " c cooks a meal"), ("where is c", " in the kitchen")]
    reqs = [request("loglikelihood", (ctx, cont, task_utils.doc_to_visual, 0, "t", "test"), 0, idx=i)
            for i, (ctx, cont) in enumerate(pairs)]
    features = lm.features.get(videos[0])
    for (ctx, cont), result in zip(pairs, lm.loglikelihood(reqs)):
        loss, greedy = unwrap_generation_output(result)[0]
        expected_loss, expected_greedy = lm._continuation_nll(features, ctx, cont.strip())
        assert loss == pytest.approx(expected_loss) and greedy == expected_greedy
