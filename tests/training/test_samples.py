"""The batched prompt-length check equals encoding every prompt in full."""

from __future__ import annotations

import pytest

from topa_plugin.textvid import read_textvid, sample_path
from topa_plugin.training.samples import truncation_problem, truncation_problems


@pytest.fixture(scope="module")
def templates(processor):
    out = []
    for record in read_textvid(sample_path()):
        out.append(processor.summary_template(record.global_video_caption))
        for qa in record.qas:
            out.append(processor.multiple_choice_template(qa.question, qa.options, qa.answer_index))
            if qa.answer_open_ended:
                out.append(processor.open_ended_template(qa.question, qa.answer_open_ended))
    out.append(processor.multiple_choice_template("</s> odd <s> é " * 9, ["a", "b", "c", "d", "e"], 4))
    out.append(processor.open_ended_template("what?", None))  # no labels at all
    return out


@pytest.mark.parametrize("max_seq_len", [1, 20, 60, 90, 120, 175, 400])
def test_batched_check_equals_the_full_encoding(processor, templates, max_seq_len):
    exact = [truncation_problem(processor.build(t), max_seq_len) for t in templates]
    assert truncation_problems(processor, templates, max_seq_len) == exact
    if max_seq_len in (90, 120):  # the cases that need the exact path and the ones that do not both occur
        assert any(exact) and not all(exact)


def test_balancing_shuffles_a_copy_so_revisits_keep_the_right_label():
    """The release shuffled a record's options in place: a revisit could then train on the wrong label."""
    import random

    from topa_plugin.training.samples import balance_options

    options = ["c cuts onions", "c washes a pan", "c opens the fridge", "c reads", "c sleeps"]
    kept = list(options)
    rng = random.Random(0)
    orders = set()
    for _visit in range(40):
        shuffled, answer = balance_options(options, 2, rng)
        assert options == kept and shuffled[answer] == "c opens the fridge"
        orders.add(tuple(shuffled))
    assert len(orders) > 10
    assert balance_options(["a", "b", "all of the above", "d", "e"], 2, rng) == (["a", "b", "all of the above", "d", "e"], 2)
