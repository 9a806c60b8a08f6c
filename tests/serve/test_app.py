"""The app's answering function and page, with a stand-in Asker (the real one runs in integration_tests/test_serve.py)."""

from __future__ import annotations

import logging
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")

from tests.helpers.lmms_fixtures import write_garbage_video  # noqa: E402
from topa_plugin.ask import AskError  # noqa: E402
from topa_plugin.demo.toy import write_toy_video  # noqa: E402
from topa_plugin.serve.app import (  # noqa: E402
    INTERNAL_ERROR,
    MAX_QUEUED,
    build_app,
    framed,
    make_answer_fn,
    parse_options,
    score_rows,
)
from topa_plugin.serve.uploads import MB, UploadLimits  # noqa: E402

LIMITS = UploadLimits(max_bytes=10 * MB, max_duration_s=60)


class FakeAsker:
    """Records its calls; answers with the lowest of given scores, or fails as told."""

    def __init__(self, error: Exception | None = None):
        self.calls, self.error = [], error

    def ask(self, video, question, options=()):
        self.calls.append((video, question, list(options)))
        if self.error is not None:
            raise self.error
        scores = [float(len(o)) for o in options]
        index = scores.index(min(scores)) if scores else None
        return SimpleNamespace(answer=options[index] if options else "generated", options=list(options), scores=scores)


def _no_progress(*args, **kwargs):
    return None


def _explain(answer) -> str:
    return f"<p>{answer.answer}</p>"


@pytest.fixture
def video(tmp_path):
    return str(write_toy_video(tmp_path / "clip.mp4", n_frames=8))


def test_parse_options_one_per_line():
    assert parse_options("  a knife \n\n a spoon\n") == ["a knife", "a spoon"]
    assert parse_options("") == [] and parse_options(None) == []


def test_answer_returns_text_scores_and_the_framed_explanation(video):
    asker = FakeAsker()
    answer, scores, explanation = make_answer_fn(asker, LIMITS, _explain)(video, "Which?", "a spoon\nknife\n", _no_progress)
    assert asker.calls == [(video, "Which?", ["a spoon", "knife"])]
    assert answer == "knife"
    assert scores == [{"option": "a spoon", "mean_nll": 7.0}, {"option": "knife", "mean_nll": 5.0}]
    assert explanation.startswith("<iframe") and "&lt;p&gt;knife&lt;/p&gt;" in explanation


def test_free_generation_has_no_scores(video):
    answer, scores, _ = make_answer_fn(FakeAsker(), LIMITS, _explain)(video, "What?", "", _no_progress)
    assert answer == "generated" and scores == []


def test_input_errors_become_one_escaped_line_naming_the_upload_by_its_name(tmp_path, caplog):
    upload = str(tmp_path / "deep" / "server" / "folder" / "clip<b>.mp4")
    write_toy_video(upload, n_frames=8)
    asker = FakeAsker(AskError(f"video {upload}: packet 3 is truncated\nsecond line"))
    with caplog.at_level(logging.INFO), pytest.raises(gr.Error) as raised:
        make_answer_fn(asker, LIMITS, _explain)(upload, "q", "a\nb", _no_progress)
    assert raised.value.message == "video clip&lt;b&gt;.mp4: packet 3 is truncated"
    assert "refused a request" in caplog.text and "Traceback" not in caplog.text


def test_bad_uploads_never_reach_the_model(tmp_path):
    asker = FakeAsker()
    with pytest.raises(gr.Error, match="junk.mp4: not a video"):
        make_answer_fn(asker, LIMITS, _explain)(str(write_garbage_video(tmp_path / "junk.mp4")), "q", "a\nb", _no_progress)
    with pytest.raises(gr.Error, match="no video"):
        make_answer_fn(asker, LIMITS, _explain)(None, "q", "a\nb", _no_progress)
    assert asker.calls == []


def test_other_failures_give_one_line_and_the_log_has_the_traceback(video, caplog):
    asker = FakeAsker(RuntimeError("CUDA out of memory at /secret/path"))
    with caplog.at_level(logging.INFO), pytest.raises(gr.Error) as raised:
        make_answer_fn(asker, LIMITS, _explain)(video, "q", "a\nb", _no_progress)
    assert raised.value.message == INTERNAL_ERROR and "secret" not in raised.value.message
    assert "Traceback" in caplog.text and "CUDA out of memory" in caplog.text


def test_framed_page_round_trips_through_the_srcdoc_attribute():
    page = '<!doctype html><p title="a&b">x</p><script>alert("</iframe>")</script>'

    class Srcdoc(HTMLParser):
        def handle_starttag(self, tag, attrs):
            self.attrs = dict(attrs)

    parser = Srcdoc()
    parser.feed(framed(page))
    assert parser.attrs["srcdoc"] == page and parser.attrs["sandbox"] == "allow-scripts"


def test_score_rows_keep_the_options_order():
    answer = SimpleNamespace(options=["b", "a"], scores=[2.5, 1.0])
    assert score_rows(answer) == [{"option": "b", "mean_nll": 2.5}, {"option": "a", "mean_nll": 1.0}]


def test_the_api_is_one_endpoint_answer_with_three_inputs_and_three_outputs(tmp_path):
    examples = [[str(write_toy_video(tmp_path / "ex.mp4", n_frames=8)), "What?", "a\nb"]]
    app = build_app(FakeAsker(), LIMITS, examples=examples, explain=_explain, retention_s=120)
    info = app.get_api_info()
    assert list(info["named_endpoints"]) == ["/answer"]
    endpoint = info["named_endpoints"]["/answer"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == ["video", "question", "options"]
    assert [r["label"] for r in endpoint["returns"]] == ["Answer", "Scores", "Explanation"]
    assert app.delete_cache == (12, 120)
    assert app._queue.max_size == MAX_QUEUED  # a flood of requests is refused, not queued without end
    assert any(type(block).__name__ == "Dataset" for block in app.blocks.values())  # the examples
