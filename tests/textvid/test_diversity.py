"""distinct-n, caption openings and question types."""

from __future__ import annotations

from topa_plugin.textvid.diversity import DistinctNgrams, Diversity, question_type
from topa_plugin.textvid.records import TextVidRecord


def test_distinct_ngrams_count_within_each_text():
    d = DistinctNgrams()
    d.add(["a", "b", "a", "b"])
    d.add(["b", "a"])
    r = d.result()
    assert r["distinct_1_counts"] == [2, 6] and r["distinct_2_counts"] == [2, 4]  # bigrams: ab ba ab | ba
    assert r["distinct_1"] == 2 / 6 and r["distinct_2"] == 0.5


def test_distinct_ngrams_merge_in_batches(monkeypatch):
    import topa_plugin.textvid.diversity as diversity

    monkeypatch.setattr(diversity, "_FLUSH", 3)
    d = DistinctNgrams()
    for text in ("x y z", "x y", "w", "z y x"):
        d.add(text.split())
    assert d.result()["distinct_1_counts"] == [4, 9] and d.result()["distinct_2_counts"] == [4, 5]


def test_question_types():
    cases = {"What is the goal of the person?": "goal", "Why did she stop?": "why", "How many cups?": "how many",
             "How does he cut it?": "how", "Which tool is used?": "which", "What happens next?": "what",
             "Describe the scene.": "describe", "Did he open the door?": "yes/no", "Summarise the task.": "describe",
             "The man then does what?": "other"}
    assert {q: question_type(q) for q in cases} == cases


def test_openings_and_types_from_records():
    record = TextVidRecord.from_dict({
        "idx": "a", "global_video_caption": "s",
        "frames": [{"c": "A man opens the door.", "o": "A man opens a box"}, {"c": "The dog sleeps"}],
        "QAs": [{"question": "Why?", "options": list("abcde"), "answer": "A"}]})
    d = Diversity()
    d.add(record)
    r = d.result()
    assert r["caption_openings"][0] == ["a man opens", 2] and r["distinct_caption_openings"] == 2
    assert r["question_types"] == {"why": 1}
