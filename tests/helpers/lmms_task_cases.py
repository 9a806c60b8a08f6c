"""Synthetic docs in the schema of each lmms-eval 0.7.3 video task TOPA answers, and how to check them.

Each multiple-choice question is written once per option, with that option as the answer and the
same video: the model answers every copy alike, so exactly one copy per question is scored
correct by the task's own ``process_results`` when the reply is read right, and none when it is
misread. Option texts carry the cases the issue lists ("U.S. flag", "1. Red." style numbers,
caption-matching lists); the truth each check uses is written here, next to the doc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LETTERS = "ABCDE"


@dataclass
class TaskCase:
    """One task: its docs, the videos they need (path under $HF_HOME -> seed) and its checks."""

    task: str
    docs: list[dict]
    videos: dict[str, int]
    kind: str  # "rank" (options shown), "loglikelihood" (multiple_choice task), "generate", "caption"
    options: Callable[[dict], list[str]] | None = None  # expected option texts of a (processed) doc
    answer: Callable[[dict], int] | None = None  # gold option index of a (processed) doc
    correct: Callable[[dict, dict], bool] | None = None  # the task's own verdict from (logged sample, doc)
    labels: Callable[[dict, int], str] | None = None  # reply for option i of a doc, in its prompt's label style
    yaml_path: Path | None = None  # a variant shipped by topa_plugin instead of an installed yaml
    extra_files: dict[str, str] = field(default_factory=dict)  # path under $HF_HOME -> text


def _strip_label(option: str) -> str:
    return option.split(". ", 1)[1] if ". " in option[:4] else option


def _one_per_answer(make: Callable[[int], dict], n_options: int) -> list[dict]:
    return [make(k) for k in range(n_options)]


# ----- EgoSchema -----
def egoschema_cases() -> list[TaskCase]:
    texts = ["c waves a U.S. flag", "c cuts an onion", "c washes a cup", "c reads a book", "c opens a door"]
    plain = ["c cooks a meal", "c cleans the kitchen", "c repairs a bicycle", "c paints a wall", "c plays with a dog"]

    def docs(options):
        return _one_per_answer(lambda k: {
            "question_idx": str(k), "video_idx": "ego-0001", "question": "What does c do with the object?",
            "option": [f"{LETTERS[j]}. {t}" for j, t in enumerate(options)], "answer": k}, 5)

    common = {"videos": {"egoschema/videos/ego-0001.mp4": 1},
              "options": lambda d: [_strip_label(o) for o in d["option"]], "answer": lambda d: int(d["answer"]),
              "correct": lambda s, d: s["score"]["pred"] == s["score"]["ground_truth"]}
    return [
        TaskCase("egoschema_subset", docs(texts), kind="rank", labels=lambda d, i: LETTERS[i], **common),
        # lmms-eval's egoschema_doc_to_choice cuts options at their second "." (documented): plain texts here
        TaskCase("egoschema_subset_mcppl", docs(plain), kind="loglikelihood", **common),
    ]


# ----- MVBench: all 20 subtasks -----
def mvbench_cases() -> list[TaskCase]:
    from lmms_eval.tasks.mvbench.utils import DATA_LIST

    candidates = ["the man waves a U.S. flag", "the man sits down"]
    cases = []
    for seed, (sub, folder) in enumerate(sorted(DATA_LIST.items())):
        docs = _one_per_answer(lambda k: {"video": "clip.mp4", "question": "what is the man doing?",
                                          "candidates": candidates, "answer": candidates[k]}, 2)
        cases.append(TaskCase(
            f"mvbench_{sub}", docs, {f"mvbench_video/{folder}/clip.mp4": 10 + seed}, "rank",
            options=lambda d: list(d["candidates"]), answer=lambda d: d["candidates"].index(d["answer"]),
            correct=lambda s, d: s["mvbench_accuracy"]["score"] == 1, labels=lambda d, i: f"({LETTERS[i]})"))
    return cases


# ----- NExT-QA -----
def nextqa_cases() -> list[TaskCase]:
    answers = ["to open it", "to clean it", "to U.S. standards", "to paint it", "to hide it"]
    docs = _one_per_answer(lambda k: {"video": "4010069381", "frame_count": 100, "width": 64, "height": 64,
                                      "question": "why did the boy touch the door", "answer": k, "qid": k,
                                      "type": "CW", **{f"a{j}": a for j, a in enumerate(answers)}}, 5)
    return [TaskCase("nextqa_mc_test", docs, {"nextqa/NExTVideo/4010069381.mp4": 30}, "rank",
                     options=lambda d: [d[f"a{j}"] for j in range(5)], answer=lambda d: int(d["answer"]),
                     correct=lambda s, d: bool(s["exact_match"]), labels=lambda d, i: LETTERS[i])]


# ----- Video-MME and its variants -----
_VIDEOMME_SRT = """1
00:00:00,000 --> 00:00:02,000
<font color="white" size=".72c">the quick brown fox says hello</font>

2
00:00:02,000 --> 00:00:04,000
<font color="white" size=".72c">subtitle line two</font>
"""
VIDEOMME_SUBTITLE = "the quick brown fox says hello"


def _videomme_docs() -> list[dict]:
    options = ["A. Red.", "B. Blue.", "C. A U.S. flag.", "D. Green."]
    return _one_per_answer(lambda k: {
        "video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
        "url": "https://example.invalid/v", "videoID": "vmme-0001", "question_id": "001-1",
        "task_type": "Counting Problem", "question": "What colour is the flag?", "options": options,
        "answer": LETTERS[k]}, 4)


def videomme_cases(shipped_tasks: Path) -> list[TaskCase]:
    videos = {"videomme/data/vmme-0001.mp4": 40}
    letter_checks = {"options": lambda d: [_strip_label(o) for o in d["options"]],
                     "answer": lambda d: LETTERS.index(d["answer"]),
                     "correct": lambda s, d: s["videomme_perception_score"]["pred_answer"] == s["videomme_perception_score"]["answer"]}
    number_checks = {**letter_checks, "answer": lambda d: int(d["answer"]) - 1}
    return [
        TaskCase("videomme", _videomme_docs(), videos, "rank", labels=lambda d, i: LETTERS[i], **letter_checks),
        TaskCase("videomme_w_subtitle", _videomme_docs(), videos, "rank", labels=lambda d, i: LETTERS[i],
                 extra_files={"videomme/subtitle/vmme-0001.srt": _VIDEOMME_SRT}, **letter_checks),
        TaskCase("videomme_revert_oe_mcq", _videomme_docs()[:1], videos, "generate"),
        TaskCase("topa_videomme_number_option", _videomme_docs(), videos, "rank", labels=lambda d, i: str(i + 1),
                 yaml_path=shipped_tasks / "topa_videomme_number_option.yaml", **number_checks),
        TaskCase("topa_videomme_random_choice", _videomme_docs(), videos, "rank", labels=lambda d, i: LETTERS[i],
                 yaml_path=shipped_tasks / "topa_videomme_random_choice.yaml", **letter_checks),
    ]


# ----- Perception Test -----
def perceptiontest_cases(shipped_tasks: Path) -> list[TaskCase]:
    options = ["U.S. flag", "a red cup", "nothing"]

    def docs():
        return _one_per_answer(lambda k: {
            "video_name": "video_1001", "question": "What is on the table?", "question_id": "q1",
            "options": options, "answer_id": k, "area": "physics", "reasoning": "counting", "tag": ["t"]}, 3)

    val = {"options": lambda d: list(d["options"]), "answer": lambda d: int(d["answer_id"]),
           "correct": lambda s, d: s["accuracy"]["correct"] == 1}
    return [
        TaskCase("perceptiontest_val_mc", docs(), {"perceptiontest_val/videos/video_1001.mp4": 50}, "rank",
                 labels=lambda d, i: LETTERS[i], **val),
        TaskCase("topa_perceptiontest_val_mcppl", docs(), {"perceptiontest_val/videos/video_1001.mp4": 50},
                 "loglikelihood", yaml_path=shipped_tasks / "topa_perceptiontest_val_mcppl.yaml", **val),
        TaskCase("perceptiontest_test_mc", docs(), {"perceptiontest/videos/video_1001.mp4": 50}, "rank",
                 labels=lambda d, i: LETTERS[i], options=lambda d: list(d["options"]),
                 answer=lambda d: int(d["answer_id"]),
                 correct=lambda s, d: s["submission"]["pred_id"] == d["answer_id"]),
    ]


# ----- TempCompass -----
def tempcompass_cases() -> list[TaskCase]:
    mc_options = ["A. left to right", "B. right to left", "C. U.S. flag rises", "D. not moving"]
    mc = _one_per_answer(lambda k: {
        "video_id": "tc_mc", "question": "Which direction does the car move?\n" + "\n".join(mc_options),
        "answer": mc_options[k], "dim": "direction"}, 4)
    captions = ["Caption A: a man runs to the left", "Caption B: a man runs to the right"]
    sentences = ["Sentence 1: the light turns on", "Sentence 2: the light turns off"]
    matching = [
        {"video_id": "tc_cm", "question": f"{header}\n" + "\n".join(lines), "answer": lines[k], "dim": "direction"}
        for header, lines in (("Which caption matches the video?", captions), ("Which sentence matches the video?", sentences))
        for k in range(2)
    ]
    rating = {"correct": lambda s, d: s["avg_accuracy"]["rating"] == 1}
    return [
        TaskCase("tempcompass_multi_choice", mc, {"tempcompass/videos/tc_mc.mp4": 60}, "rank",
                 options=lambda d: [_strip_label(o) for o in d["question"].split("\n")[1:]],
                 answer=lambda d: d["question"].split("\n")[1:].index(d["answer"]), labels=lambda d, i: LETTERS[i], **rating),
        TaskCase("tempcompass_caption_matching", matching, {"tempcompass/videos/tc_cm.mp4": 61}, "rank",
                 options=lambda d: [o.split(": ", 1)[1] for o in d["question"].split("\n")[1:]],
                 answer=lambda d: d["question"].split("\n")[1:].index(d["answer"]),
                 labels=lambda d, i: d["question"].split("\n")[1 + i].split(":")[0], **rating),
    ]


# ----- MLVU -----
def mlvu_cases() -> list[TaskCase]:
    options = ["(A) a dog", "(B) a cat", "(C) a U.S. flag", "(D) a bird"]
    docs = _one_per_answer(lambda k: {"video_name": "mlvu_1.mp4", "question": "What appears first?\n" + "\n".join(options),
                                      "answer": LETTERS[k], "task_type": "count", "question_id": "m1"}, 4)
    return [TaskCase("mlvu_dev", docs, {"mlvu/mlvu_1.mp4": 70}, "rank",
                     options=lambda d: [o[4:] for o in d["question"].split("\n")[1:]],
                     answer=lambda d: LETTERS.index(d["answer"]), labels=lambda d, i: f"({LETTERS[i]})",
                     correct=lambda s, d: s["mlvu_percetion_score"]["pred_answer"] == s["mlvu_percetion_score"]["answer"])]


# ----- LongVideoBench (its utils import decord) -----
def longvideobench_cases() -> list[TaskCase]:
    options = ["a U.S. flag", "a red car", "a green tree", "a blue door", "N/A"]  # "N/A": no fifth option
    docs = _one_per_answer(lambda k: {
        "id": "lvb_1", "video_path": "lvb_1.mp4", "duration": 2.0, "duration_group": 15, "question_category": "S2E",
        "question": "What is shown at the start?", "correct_choice": k, **{f"option{j}": o for j, o in enumerate(options)}}, 4)
    return [TaskCase("longvideobench_val_v", docs, {"datasets/longvideobench/videos/lvb_1.mp4": 90}, "rank",
                     options=lambda d: [d[f"option{j}"] for j in range(5) if d[f"option{j}"] != "N/A"],
                     answer=lambda d: int(d["correct_choice"]), labels=lambda d, i: LETTERS[i],
                     correct=lambda s, d: s["lvb_acc"]["parsed_pred"] == s["lvb_acc"]["answer"])]


# ----- captioning -----
def captioning_cases() -> list[TaskCase]:
    vatex = [{"videoID": "vatex_1", "enCap": ["A man rides a bike.", "A person cycles down a road."]}]
    youcook = [{"video_path": "val/yc_1.mp4", "youtube_id": "yc_1", "segment": [0, 2], "sentence": "cut the onion",
                "id": "yc_1_0", "recipe_type": "101"}]
    return [
        TaskCase("vatex_test", vatex, {"vatex_test/vatex_1.mp4": 80}, "caption"),
        TaskCase("youcook2_val", youcook, {"YouCookIIVideos/YouCookIIVideos/val/yc_1.mp4": 81}, "caption"),
    ]
