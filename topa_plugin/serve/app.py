"""The Gradio app of ``topa serve``: one page and one API function (``/answer``) over a loaded ``Asker``.

The page takes a video (an upload or an example), a question and options one per line (none: free
generation) and shows the answer, the option scores as a chart and the explanation of ``topa ask --report``
(each sampled frame with its nearest textual frames). The API is the same function: inputs (video file,
question, options string), outputs (answer text, scores, explanation HTML).

Bad input becomes a ``gr.Error`` with the project's one-line message; any other failure is logged with its
traceback and the browser gets one line saying the log has it. Requests queue; ``concurrency`` of them run
at once, so one request decodes its video while another holds the model (``Asker.ask`` is thread-safe)."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Sequence

from topa_plugin.serve.uploads import UploadLimits
from topa_plugin.utils.errors import INPUT_ERRORS, first_line

log = logging.getLogger(__name__)

API_NAME = "answer"
CONCURRENCY = 2  # one request decodes while another holds the model; more only queue on the model's lock
EXPLANATION_HEIGHT_PX = 900
INTERNAL_ERROR = "the server could not answer this request (an internal error; the server's log has the details)"


def parse_options(text: str | None) -> list[str]:
    """Options from the one-per-line text box: stripped lines, blank lines dropped (none: free generation)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def score_rows(answer) -> list[dict]:
    """The API's scores output: one ``{"option", "mean_nll"}`` per option, in the options' order (empty for
    free generation). Lower is better; the answer is the lowest."""
    return [{"option": option, "mean_nll": float(score)} for option, score in zip(answer.options, answer.scores)]


def scores_chart(rows: Sequence[dict] | None) -> str:
    """An ``<img>`` of the option scores with the chosen (lowest) one marked; empty for free generation."""
    from topa_plugin.pages import charts

    if not rows:
        return ""
    scores = [row["mean_nll"] for row in rows]
    chosen = min(range(len(scores)), key=scores.__getitem__)
    uri = charts.option_scores([row["option"] for row in rows], scores, chosen)
    return f'<img class="scores-chart" alt="option scores" src="{html.escape(uri)}" style="max-width:100%">'


def framed(page: str) -> str:
    """The explanation page inside a sandboxed ``iframe``: its styles stay out of the app's, and its
    scripts (if any) run without access to the app."""
    return (f'<iframe class="explanation" sandbox="allow-scripts" title="explanation" '
            f'style="width:100%;height:{EXPLANATION_HEIGHT_PX}px;border:0" srcdoc="{html.escape(page, quote=True)}"></iframe>')


def make_answer_fn(asker, limits: UploadLimits, explain: Callable[[object], str]):
    """The function behind the button and ``/answer``: (video, question, options) -> (answer, scores, explanation)."""
    import gradio as gr

    def answer(video, question: str, options: str, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        try:
            progress(0.0, desc="checking the video")
            path = limits.check(video)
            progress(0.1, desc="reading frames and answering")
            result = asker.ask(str(path), question or "", parse_options(options))
            progress(0.9, desc="drawing the explanation")
            return result.answer, score_rows(result), framed(explain(result))
        except INPUT_ERRORS as err:
            log.info("refused a request: %s", err)
            raise gr.Error(html.escape(first_line(err)), print_exception=False) from None
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
                    "(none: the model writes a free answer). Lower mean NLL wins.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], elem_id="video")
                question = gr.Textbox(label="Question", lines=1, elem_id="question")
                options = gr.Textbox(label="Options, one per line (none: free generation)", lines=5, elem_id="options")
                submit = gr.Button("Answer", variant="primary", elem_id="submit")
            with gr.Column():
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                chart = gr.HTML(elem_id="chart")
                scores = gr.JSON(label="Scores", elem_id="scores")
        explanation = gr.HTML(label="Explanation", elem_id="explanation")
        if examples:
            gr.Examples(examples, inputs=[video, question, options], label="Examples")
        outputs = [answer, scores, explanation]
        submit.click(lambda: ("", None, "", ""), None, [*outputs, chart], queue=False, api_visibility="private") \
            .then(answer_fn, [video, question, options], outputs, api_name=API_NAME, concurrency_limit=CONCURRENCY) \
            .success(scores_chart, scores, chart, queue=False, api_visibility="private")
    return app
