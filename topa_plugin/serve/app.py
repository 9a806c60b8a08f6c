"""The Gradio app of ``topa serve``: one page and one API function (``/answer``) over a loaded ``Asker``.

The page takes a video (an upload or an example), a question and options one per line (none: free
generation) and shows the answer and the explanation page of ``topa ask --report``: the option scores as a
chart, each sampled frame with its nearest textual frames, the prompt. The API is the same function: inputs
(video file, question, options string), outputs (answer text, scores, explanation HTML).

Bad input becomes a ``gr.Error`` with the project's one-line message; any other failure is logged with its
traceback and the browser gets one line saying the log has it. Requests queue; ``CONCURRENCY`` of them are taken
at once, so one request's upload check, video decoding and explanation overlap another's answer; ``Asker.ask``
(thread-safe) decodes outside its lock and runs CLIP and the LLM for one request at a time."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from pathlib import Path

from topa_plugin.serve.uploads import UploadLimits
from topa_plugin.utils.errors import INPUT_ERRORS, first_line

log = logging.getLogger(__name__)

API_NAME = "answer"
CONCURRENCY = 2  # one request in the model, one decoding or drawing beside it; more would wait on Asker.ask's lock
MAX_QUEUED = 64  # requests waiting beyond this get Gradio's "queue is full" instead of an ever longer wait
EXPLANATION_HEIGHT_PX = 1200
INTERNAL_ERROR = "the server could not answer this request (an internal error; the server's log has the details)"


def parse_options(text: str | None) -> list[str]:
    """Options from the one-per-line text box: stripped lines, blank lines dropped (none: free generation)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def score_rows(answer) -> list[dict]:
    """The API's scores output: one ``{"option", "mean_nll"}`` per option, in the options' order (empty for
    free generation). Lower is better; the answer is the lowest."""
    return [{"option": option, "mean_nll": float(score)} for option, score in zip(answer.options, answer.scores)]


def framed(page: str) -> str:
    """The explanation page inside a sandboxed ``iframe``: its styles stay out of the app's, and its
    scripts (if any) run without access to the app."""
    return (f'<iframe class="explanation" sandbox="allow-scripts" title="explanation" '
            f'style="width:100%;height:{EXPLANATION_HEIGHT_PX}px;border:0" srcdoc="{html.escape(page, quote=True)}"></iframe>')


def make_answer_fn(asker, limits: UploadLimits, explain: Callable[[object], str]):
    """The function behind the button and ``/answer``: (video, question, options) -> (answer, scores, explanation)."""
    import gradio as gr

    def answer(video, question: str, options: str, progress=gr.Progress()):  # Gradio fills in ``progress``
        try:
            progress(0.0, desc="checking the video")
            path = limits.check(video)
            progress(0.1, desc="reading frames and answering")
            result = asker.ask(str(path), question or "", parse_options(options))
            progress(0.9, desc="drawing the explanation")
            return result.answer, score_rows(result), framed(explain(result))
        except INPUT_ERRORS as err:
            log.info("refused a request: %s", err)
            message = first_line(err)
            if video:  # name the upload as the user knows it, not by the server's folder
                message = message.replace(str(video), Path(video).name)
            raise gr.Error(html.escape(message, quote=False), print_exception=False) from None
        except Exception:
            log.exception("request failed")
            raise gr.Error(INTERNAL_ERROR, print_exception=False) from None

    return answer


def build_app(asker, limits: UploadLimits, *, examples: list[list[str]] | None = None, retention_s: int = 900,
              explain: Callable[[object], str] | None = None, title: str = "TOPA: ask a video"):
    """The Gradio ``Blocks`` of the page and ``/answer``. Uploads older than ``retention_s`` are deleted
    (checked every ``retention_s / 10`` seconds, at least every minute)."""
    import gradio as gr

    if explain is None:
        from topa_plugin.pages.explanation import explanation_html as explain
    answer_fn = make_answer_fn(asker, limits, explain)
    cleanup = (max(1, min(60, retention_s // 10)), retention_s)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=cleanup) as app:
        gr.Markdown(f"# {title}\nUpload a video or pick an example, ask a question and give options one per line "
                    "(none: the model writes a free answer). The option with the lowest mean NLL is the answer.")
        with gr.Row():
            with gr.Column(scale=2):
                video = gr.Video(label="Video", sources=["upload"], height=320, elem_id="video")
                question = gr.Textbox(label="Question", lines=1, elem_id="question")
                options = gr.Textbox(label="Options, one per line (none: free generation)", lines=5, elem_id="options")
                submit = gr.Button("Answer", variant="primary", elem_id="submit")
                with gr.Accordion("Scores as the API returns them", open=False):
                    scores = gr.JSON(label="Scores", elem_id="scores")
            with gr.Column(scale=3):
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                explanation = gr.HTML(label="Explanation", elem_id="explanation")
        if examples:
            gr.Examples(examples, inputs=[video, question, options], label="Examples")
        outputs = [answer, scores, explanation]
        # Clear the last answer first, so a refused request never leaves it showing beside the new question.
        submit.click(lambda: ("", None, ""), None, outputs, queue=False, api_visibility="private") \
            .then(answer_fn, [video, question, options], outputs, api_name=API_NAME, concurrency_limit=CONCURRENCY)
    app.queue(max_size=MAX_QUEUED)
    return app
