"""Conditions and prompt templates: every condition once per pass, templates checked before any request."""

from __future__ import annotations

import pytest

from topa_plugin.textvid.conditions import BUILTIN_SOURCES, FRAME_RANGE, load_conditions, load_prompt
from topa_plugin.textvid.errors import GenerationError


def test_each_pass_uses_every_condition_once_in_a_seeded_order(tmp_path):
    source = tmp_path / "my conditions.txt"
    source.write_text("a\n\nb\nc\n  d  \n", encoding="utf-8")
    conditions = load_conditions(str(source))
    assert (conditions.tag, conditions.kind, conditions.lines) == ("my-conditions", "file", ("a", "b", "c", "d"))
    first, second = ([conditions.pick(7, r) for r in range(start, start + 4)] for start in (0, 4))
    assert sorted(first) == sorted(second) == ["a", "b", "c", "d"]
    assert first == [conditions.pick(7, r) for r in range(4)]  # same seed, same order
    assert {tuple(conditions.pick(seed, r) for r in range(4)) for seed in range(20)} != {tuple(first)}


@pytest.mark.parametrize("source", BUILTIN_SOURCES)
def test_builtin_sources_have_conditions(source):
    assert len(load_conditions(source).lines) > 10


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(GenerationError, match="neither one of howto"):
        load_conditions(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(GenerationError, match="no conditions"):
        load_conditions(str(empty))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(GenerationError, match="not UTF-8"):
        load_conditions(str(latin))


def test_prompt_fills_condition_and_frame_range():
    system, user = load_prompt("howto").messages("how to fold a shirt")
    assert system["role"] == "system" and user["role"] == "user"
    assert "how to fold a shirt" in user["content"]
    assert str(FRAME_RANGE[0]) in user["content"] and str(FRAME_RANGE[1]) in user["content"]


@pytest.mark.parametrize("template, message", [
    ("Write about $nope", r"unknown placeholder \$nope"),
    ("Write about ${condition", "malformed placeholder"),
    ("Write a video", "neither \\$condition nor \\$source_instruction"),
])
def test_bad_templates_fail_before_any_request(tmp_path, template, message):
    path = tmp_path / "t.txt"
    path.write_text(template)
    with pytest.raises(GenerationError, match=message):
        load_prompt("howto", path)
