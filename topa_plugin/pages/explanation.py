"""The explanation page of one answer (``topa ask --report``): the frames the model saw, the textual frames
of the memory each lies nearest to, how well the memory covers it, the option scores and the exact prompt."""

from __future__ import annotations

from pathlib import Path

from topa_plugin.pages import charts
from topa_plugin.pages.images import thumbnail_uri
from topa_plugin.pages.render import render, write_page

TEMPLATE = "explanation.html.j2"


def _option_labels(answer) -> list[str]:
    return [f"{chr(ord('A') + i)}. {text}" for i, text in enumerate(answer.options)]


def explanation_html(answer) -> str:
    """The page's HTML for an ``Answer`` (``topa_plugin.ask``); every string from the user or the memory is escaped."""
    import topa_plugin
    from topa_plugin.features.memory import COVERAGE_PERCENTILE, COVERAGE_SAMPLE

    chart = None
    if answer.answer_index is not None:
        chart = charts.option_scores(_option_labels(answer), answer.scores, answer.answer_index, answer.correct_index)
    images = answer.images or [None] * len(answer.frames)
    frames = [{"frame": frame, "thumbnail": None if image is None else thumbnail_uri(image)}
              for frame, image in zip(answer.frames, images)]
    has_text = any(n.text is not None for f in answer.frames for n in f.neighbors)
    return render(
        TEMPLATE, title=f"TOPA answer: {answer.question}", version=topa_plugin.__version__, answer=answer,
        video_name=Path(answer.video).name, frames=frames, chart=chart, option_labels=_option_labels(answer),
        has_text=has_text, low=sum(f.low_coverage for f in answer.frames),
        coverage_sample=COVERAGE_SAMPLE, coverage_percentile=COVERAGE_PERCENTILE,
    )


def write_explanation(answer, path: str | Path) -> Path:
    """Write the explanation page of ``answer`` to ``path`` (an .html file in an existing folder)."""
    return write_page(path, explanation_html(answer))
