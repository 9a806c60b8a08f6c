"""The TextVid quality report as one self-contained HTML page (``topa textvid report --out``): the figures of
``topa_plugin.textvid.quality`` for one file, or two side by side, charts drawn by ``charts``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from topa_plugin.pages import charts
from topa_plugin.pages.render import render, write_page
from topa_plugin.textvid.diversity import QUESTION_TYPES
from topa_plugin.textvid.quality import DEGENERATE_KINDS
from topa_plugin.textvid.records import LETTERS
from topa_plugin.textvid.shortcuts import DESCRIPTIONS

TEMPLATE = "textvid_report.html.j2"
# (histogram, chart title, x label)
DISTRIBUTIONS = (
    ("frames_per_record", "frames per Tideo", "frames"),
    ("captions_per_frame", "captions per frame", "captions"),
    ("words_per_caption", "caption length", "words"),
    ("words_per_question", "question length", "words"),
    ("qas_per_record", "QAs per Tideo", "QAs"),
)


def file_labels(reports: list[dict]) -> list[str]:
    """Short names for the files: their names, prefixed A/B when two files share one."""
    names = [Path(r["file"]).name for r in reports]
    if len(set(names)) < len(names):
        return [f"{letter}: {name}" for letter, name in zip("AB", names)]
    return names


def _charts(reports: list[dict], labels: list[str]) -> dict[str, Any]:
    rules = list(DESCRIPTIONS)
    types = [name for name, _ in QUESTION_TYPES] + ["other"]
    types = [t for t in types if any(r["diversity"]["question_types"].get(t) for r in reports)]
    return {
        "shortcuts": charts.rates_against_chance(
            rules, {label: [r["shortcuts"][rule] for rule in rules] for label, r in zip(labels, reports)},
            title="answer shortcuts against chance"),
        "letters": charts.bars(list(LETTERS), {label: [r["answer_letters"][x] / max(1, r["qas"]) for x in LETTERS]
                                               for label, r in zip(labels, reports)},
                               title="answer letters", ylabel="share of QAs"),
        "question_types": charts.bars(types, {label: [r["diversity"]["question_types"].get(t, 0) / max(1, r["qas"])
                                                      for t in types] for label, r in zip(labels, reports)},
                                      title="question types", ylabel="share of questions"),
        "distributions": [charts.distribution({label: r["histograms"][name] for label, r in zip(labels, reports)},
                                              title=title, xlabel=xlabel) for name, title, xlabel in DISTRIBUTIONS],
    }


def findings(report: dict) -> list[str]:
    """The defects a reader should act on, one sentence each (empty when the file shows none)."""
    out = []
    for rule, s in report["shortcuts"].items():
        if s["flag"]:
            out.append(f"{DESCRIPTIONS[rule]} in {s['rate']:.0%} of QAs, {s['flag']} chance ({s['chance']:.0%})")
    test = report["letter_test"]
    if test["biased"]:
        out.append(f"answer letters are not uniform (chi-square p = {test['p_value']:.2g})")
    near = report["near_duplicates"]
    if near["clusters"]:
        out.append(f"{near['duplicates']} near-duplicate Tideos in {len(near['clusters'])} clusters "
                   f"(similarity >= {near['threshold']:g})")
    for kind, found in report["degenerate_options"].items():
        if found["qas"]:
            out.append(f"{found['qas']} QAs where {DEGENERATE_KINDS[kind]}")
    return out


def render_report(reports: list[dict]) -> str:
    labels = file_labels(reports)
    return render(TEMPLATE, title="TextVid quality: " + " vs ".join(labels), reports=reports,
                  labels=labels, charts=_charts(reports, labels), findings=[findings(r) for r in reports],
                  descriptions=DESCRIPTIONS, degenerate_kinds=DEGENERATE_KINDS, letters=LETTERS,
                  clusters=[r["near_duplicates"]["clusters"] for r in reports])


def write_report(path: str | os.PathLike, reports: list[dict]) -> Path:
    return write_page(path, render_report(reports))
