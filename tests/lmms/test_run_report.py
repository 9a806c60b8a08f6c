"""Reading an lmms-eval run back: files written by lmms-eval's own tracker, scored by its own EgoSchema
functions; the report's counts must reproduce lmms-eval's numbers, its margins the scores' gaps."""

from __future__ import annotations

import json

import pytest

from tests.helpers.lmms_runs import GENERATE, LETTERS, MCPPL, egoschema_docs, write_lmms_run, write_request_log
from topa_plugin.lmms.run_report import (
    RunReportError,
    compare_runs,
    find_results,
    read_lmms_run,
    score_margin,
)

pytest.importorskip("lmms_eval")


def losses_for(docs, picks):
    """Per-option losses whose smallest is at ``picks[i]``, with a known gap of 0.1 * (i + 1) to the others."""
    rows = []
    for i, pick in enumerate(picks):
        row = [5.0] * 5
        row[pick] = 5.0 - 0.1 * (i + 1)
        rows.append(row)
    return rows


@pytest.fixture
def docs():
    return egoschema_docs(12, seed=3)


def picks_of(docs):
    return [(d["answer"] + (i % 3 != 0)) % 5 for i, d in enumerate(docs)]  # every third right


def replies_of(docs):
    replies = [LETTERS[p] for p in picks_of(docs)]
    replies[5] = "The answer is (C)"  # lmms-eval's parser reads the letter out of free text
    return replies


@pytest.fixture
def run_dir(tmp_path, docs):
    picks, replies = picks_of(docs), replies_of(docs)
    write_lmms_run(tmp_path / "out", {"ego_gen": (GENERATE, docs, replies), "ego_ppl": (MCPPL, docs, losses_for(docs, picks))})
    return tmp_path / "out"


def test_accuracy_and_counts_equal_lmms_evals_numbers(run_dir):
    results_file, others = find_results(run_dir)
    lmms = json.loads(results_file.read_text())["results"]
    run = read_lmms_run(run_dir)
    assert others == 0 and [s.name for s in run.scores] == ["ego_gen", "ego_ppl"]
    for score in run.scores:
        assert score.value == lmms[score.name]["score,none"] and score.metric == "score,none"
        assert score.share == pytest.approx(score.value) and score.agrees
        assert score.total == 12
    assert [s.right for s in run.scores] == [4 + (run.questions[5].correct == 2), 4]


def test_questions_read_options_reply_and_answer_from_the_prompt(run_dir, docs):
    run = read_lmms_run(run_dir)
    gen = [q for q in run.questions if q.task == "ego_gen"]
    assert [q.doc_id for q in gen] == list(range(12))
    assert gen[0].question == docs[0]["question"]
    assert gen[0].options == [o.split(". ", 1)[1] for o in docs[0]["option"]]
    assert [q.correct for q in gen] == [d["answer"] for d in docs]
    assert gen[1].reply == LETTERS[gen[1].predicted] and gen[1].right is False
    assert gen[5].reply == "The answer is (C)" and gen[5].predicted == 2
    assert gen[0].scores is None and gen[0].margin is None  # a generate run without request log has no scores


def test_ranked_task_has_scores_and_the_margin_between_the_two_best(run_dir):
    ppl = [q for q in read_lmms_run(run_dir).questions if q.task == "ego_ppl"]
    for i, q in enumerate(ppl):
        assert q.predicted == min(range(5), key=q.scores.__getitem__)
        assert q.margin == pytest.approx(0.1 * (i + 1))
    assert ppl[0].question.startswith("Question 0")  # the prompt of an mcppl task is the question itself
    assert ppl[0].options == []  # ...and its samples keep no options: they come from a request log or the data


def test_margin_follows_the_direction_of_the_scores():
    assert score_margin([3.0, 1.0, 2.5], predicted=1) == pytest.approx(1.5)   # losses: lowest wins
    assert score_margin([-3.0, -1.0, -2.5], predicted=1) == pytest.approx(1.5)  # log-likelihoods: highest wins
    assert score_margin([1.0], predicted=0) is None


def test_request_log_supplies_options_and_scores(run_dir, tmp_path, docs):
    losses = losses_for(docs, picks_of(docs))
    log = write_request_log(tmp_path / "requests.jsonl", "ego_gen", docs, losses, replies=replies_of(docs))
    run = read_lmms_run(run_dir, request_log=log)
    gen = [q for q in run.questions if q.task == "ego_gen"]
    assert [q.scores for q in gen] == losses
    assert [q.margin for q in gen] == pytest.approx([0.1 * (i + 1) for i in range(12)])
    assert gen[0].video_name == docs[0]["video_idx"] and gen[0].video is None  # named but not on disk
    assert run.doc_sources["ego_gen"] == "request log" and run.request_logs == [log]


def test_questions_of_a_ranked_task_come_from_its_local_data_file(tmp_path, docs):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    write_lmms_run(tmp_path / "out", {"ego_ppl": (MCPPL, docs, losses_for(docs, [0] * 12))}, data_file=data)
    questions = read_lmms_run(tmp_path / "out").questions
    assert [q.options for q in questions] == [[o.split(". ", 1)[1] for o in d["option"]] for d in docs]
    assert [q.reply for q in questions] == ["A (best score)"] * 12


def test_groups_sum_their_subtasks(tmp_path, docs):
    picks = [d["answer"] if i < 3 else (d["answer"] + 1) % 5 for i, d in enumerate(docs)]
    write_lmms_run(tmp_path / "out", {"a": (GENERATE, docs[:6], [LETTERS[p] for p in picks[:6]]),
                                      "b": (GENERATE, docs[6:], [LETTERS[p] for p in picks[6:]])}, groups={"both": ["a", "b"]})
    scores = read_lmms_run(tmp_path / "out").scores
    assert [(s.name, s.depth, s.is_group, s.right, s.total) for s in scores] == [
        ("both", 0, True, 3, 12), ("a", 1, False, 3, 6), ("b", 1, False, 0, 6)]
    assert scores[0].value == pytest.approx(0.25) and scores[0].agrees


def test_two_runs_split_changes_into_gained_lost_and_switched(tmp_path, docs):
    right = [d["answer"] for d in docs]
    wrong = [(a + 1) % 5 for a in right]
    other_wrong = [(a + 2) % 5 for a in right]
    a = [right[0], wrong[1], right[2], wrong[3], *right[4:]]
    b = [wrong[0], right[1], right[2], other_wrong[3], *right[4:]]
    write_lmms_run(tmp_path / "a", {"t": (GENERATE, docs, [LETTERS[x] for x in a])})
    write_lmms_run(tmp_path / "b", {"t": (GENERATE, docs, [LETTERS[x] for x in b])})
    comparison = compare_runs(read_lmms_run(tmp_path / "a"), read_lmms_run(tmp_path / "b"))
    assert [qa.doc_id for qa, _ in comparison.gained] == [1]
    assert [qa.doc_id for qa, _ in comparison.lost] == [0]
    assert [qa.doc_id for qa, _ in comparison.switched] == [3]
    assert (comparison.matched, comparison.only_a, comparison.only_b) == (12, 0, 0)


def test_newest_results_file_is_read_and_the_others_counted(tmp_path, docs):
    older = write_lmms_run(tmp_path / "out", {"t": (GENERATE, docs, ["A"] * 12)}, datetime_str="20260101_000000")
    newest = write_lmms_run(tmp_path / "out", {"t": (GENERATE, docs, ["B"] * 12)}, datetime_str="20260102_000000")
    run = read_lmms_run(tmp_path / "out")
    assert run.results_file == newest and run.other_results == 1
    assert {q.reply for q in run.questions} == {"B"}
    picked = read_lmms_run(older)  # a results file names the run itself
    assert picked.other_results == 0 and {q.reply for q in picked.questions} == {"A"}


def test_missing_results_or_samples_name_what_is_missing(tmp_path, run_dir):
    with pytest.raises(RunReportError, match=r"no lmms-eval results \(\*_results.json\)"):
        (tmp_path / "empty").mkdir()
        read_lmms_run(tmp_path / "empty")
    next(run_dir.rglob("*_samples_ego_ppl.jsonl")).unlink()
    with pytest.raises(RunReportError, match=r"no samples for task 'ego_ppl' \(20260101_000000_samples_ego_ppl.jsonl missing\)"):
        read_lmms_run(run_dir)
    with pytest.raises(RunReportError, match="--request-log .*nope.jsonl: file not found"):
        read_lmms_run(run_dir, request_log=tmp_path / "nope.jsonl")


def test_broken_samples_line_names_file_and_line(run_dir):
    samples = next(run_dir.rglob("*_samples_ego_gen.jsonl"))
    samples.write_text(samples.read_text() + "{not json\n")
    with pytest.raises(RunReportError, match=rf"{samples.name}: line 13: invalid JSON"):
        read_lmms_run(run_dir)


def test_request_log_of_another_run_is_refused_naming_the_record(run_dir, tmp_path, docs):
    other = [(p + 1) % 5 for p in picks_of(docs)]
    log = write_request_log(tmp_path / "requests.jsonl", "ego_gen", docs, losses_for(docs, other))
    told = LETTERS[other[0]]
    with pytest.raises(RunReportError, match=rf"{log}: record 1: task 'ego_gen' doc 0: reply '{told}', but the run's samples"):
        read_lmms_run(run_dir, request_log=log)


def test_an_unparsed_reply_has_no_predicted_letter():
    from topa_plugin.lmms.run_report import _index

    assert [_index(v, 5) for v in (-1, 5, "7", "C", "c", 2, "2", True)] == [None, None, None, 2, 2, 2, 2, None]
    assert _index(-1, 0) is None and _index(3, 0) == 3  # options unknown: any index the scorer gave
