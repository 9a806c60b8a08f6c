"""Charts drawn by matplotlib and embedded in pages as SVG images.

An ``<img>`` with an SVG data URI runs no script whatever its labels say, and matplotlib escapes the
text it writes into SVG; each chart is a few kilobytes and needs no chart library in the page."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

WIDTH_IN = 6.4
BAR_HEIGHT_IN = 0.32
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")
CHOSEN, CORRECT = "#4c72b0", "#55a868"


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def svg_uri(figure) -> str:
    """``data:image/svg+xml;base64,...`` of a matplotlib figure (text kept as text: small and sharp)."""
    buffer = io.BytesIO()
    with _svg_text_as_text():
        figure.savefig(buffer, format="svg")
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _svg_text_as_text():
    import matplotlib

    return matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "topa"})


def _shorten(label: str, width: int = 48) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _label(ax, title: str, xlabel: str, ylabel: str, series: int) -> None:
    """Title and axis labels; a legend once there are several series to tell apart."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if series > 1:
        ax.legend()


def option_scores(labels: Sequence[str], scores: Sequence[float], chosen: int | None,
                  correct: int | None = None, xlabel: str = "mean NLL (lower is better)") -> str:
    """Horizontal bars of each option's score; the chosen option and the correct one are coloured and named."""
    figure = _figure(WIDTH_IN, 0.8 + BAR_HEIGHT_IN * len(labels))
    ax = figure.subplots()
    colors = ["#b0b0b0"] * len(labels)
    if correct is not None:
        colors[correct] = CORRECT
    if chosen is not None:
        colors[chosen] = CHOSEN
    rows = np.arange(len(labels))
    ax.barh(rows, scores, color=colors)
    marks = [(" (chosen" if i == chosen else "") + (", correct)" if i == correct and i == chosen else
             (" (correct)" if i == correct else (")" if i == chosen else ""))) for i in range(len(labels))]
    ax.set_yticks(rows, [_shorten(label) + mark for label, mark in zip(labels, marks)])
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    return svg_uri(figure)


def bars(categories: Sequence[str], series: dict[str, Sequence[float]], title: str = "", ylabel: str = "") -> str:
    """Vertical grouped bars: one group per category, one bar per series (runs or files side by side)."""
    figure = _figure(WIDTH_IN, 3.2)
    ax = figure.subplots()
    x = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, color=COLORS[i % len(COLORS)])
    ax.set_xticks(x, [_shorten(str(c), 16) for c in categories], rotation=30 if len(categories) > 8 else 0)
    _label(ax, title, "", ylabel, len(series))
    return svg_uri(figure)


def histogram(samples: dict[str, Sequence[float]], title: str = "", xlabel: str = "", bins: int | Sequence[float] = 20) -> str:
    """Histograms of one or more samples on shared bins (step outlines, so several stay readable)."""
    figure = _figure(WIDTH_IN, 3.0)
    ax = figure.subplots()
    values = [np.asarray(v, dtype=float) for v in samples.values()]
    edges = np.histogram_bin_edges(np.concatenate(values) if values else np.zeros(1), bins=bins)
    for i, (name, sample) in enumerate(zip(samples, values)):
        ax.hist(sample, bins=edges, histtype="step", linewidth=1.6, label=name, color=COLORS[i % len(COLORS)])
    _label(ax, title, xlabel, "count", len(samples))
    return svg_uri(figure)


def distribution(counts: dict[str, dict[int, int]], title: str = "", xlabel: str = "") -> str:
    """Shares of integer values (value -> count), one outline per series: files of any size side by side,
    drawn from counts (a histogram of 180M caption lengths never becomes a list)."""
    figure = _figure(WIDTH_IN, 3.0)
    ax = figure.subplots()
    values = [int(v) for series in counts.values() for v in series] or [0]
    edges = np.arange(min(values), max(values) + 2) - 0.5
    for i, (name, series) in enumerate(counts.items()):
        total = sum(series.values()) or 1
        shares = np.zeros(len(edges) - 1)
        for value, count in series.items():
            shares[int(value) - min(values)] = count / total
        ax.stairs(shares, edges, linewidth=1.6, label=name, color=COLORS[i % len(COLORS)])
    _label(ax, title, xlabel, "share", len(counts))
    return svg_uri(figure)


def rates_against_chance(names: Sequence[str], series: dict[str, Sequence[dict]], title: str = "") -> str:
    """One row per rule: each series' rate with its interval (dot and whiskers) over the band chance spans
    (shaded), so a rate outside its band stands out. Each dict holds rate, low, high, chance_low, chance_high."""
    figure = _figure(WIDTH_IN, 1.4 + 0.55 * len(names) * max(1, len(series)))
    ax = figure.subplots()
    step = 0.8 / max(1, len(series))
    for i, (label, rows) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        for j, row in enumerate(rows):
            if row["rate"] is None:
                continue
            y = j + (i - (len(series) - 1) / 2) * step
            ax.fill_betweenx([y - step / 2.2, y + step / 2.2], row["chance_low"], row["chance_high"], color="#d0d7de",
                             label="chance (95% band)" if i == 0 and j == 0 else None)
            ax.errorbar(row["rate"], y, xerr=[[row["rate"] - row["low"]], [row["high"] - row["rate"]]], fmt="o",
                        color=color, capsize=3, label=f"{label}: rate (95% Wilson)" if j == 0 else None)
    ax.set_yticks(np.arange(len(names)), [_shorten(n, 24) for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of QAs whose answer the rule picks")
    ax.set_title(title)
    figure.legend(fontsize="small", loc="outside lower center", ncols=2 if len(series) == 1 else 1)
    return svg_uri(figure)
