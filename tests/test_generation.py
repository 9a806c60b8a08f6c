"""Batched scoring and generation: B questions at once equal the same questions one at a time."""

from __future__ import annotations

import pytest
import torch

from tests.test_modeling import QUESTIONS, build_model, features


@pytest.fixture(scope="module")
def model(toy_llama_dir, tmp_path_factory):
    return build_model(toy_llama_dir, tmp_path_factory.mktemp("generation_base"))


def batch(size: int):
    """Questions of different token lengths (so prefixes are padded), each with its own video."""
    questions = [QUESTIONS[i % 3][0] + " really" * (i % 4) for i in range(size)]
    options = [QUESTIONS[(i + 1) % 3][1] for i in range(size)]
    videos = [features(3 + 4 * i, seed=i) for i in range(size)]
    return videos, questions, options


@pytest.mark.parametrize("use_memory", [True, False])
def test_batched_scores_equal_one_at_a_time(model, use_memory):
    videos, questions, options = batch(6)
    prefix_lengths = {len(model.processor.encode_multiple_choice(q, o, None).input_ids)
                      for q, o in zip(questions, options)}
    assert len(prefix_lengths) > 2  # the batch really pads prefixes of different lengths
    scores = model.score_choices(videos, questions, options, use_memory=use_memory)
    assert scores.shape == (6, 5)
    for i in range(6):
        alone = model.score_choices(videos[i], questions[i], options[i], use_memory=use_memory)
        torch.testing.assert_close(scores[i], alone, rtol=0, atol=1e-5)
        assert int(scores[i].argmin()) == int(alone.argmin())
    # each row scored its own video: swapping videos changes the scores
    swapped = model.score_choices(videos[::-1], questions, options, use_memory=use_memory)
    assert (swapped - scores).abs().max() > 1e-3


def test_batched_generation_equals_one_at_a_time(model):
    videos, questions, _ = batch(5)
    for until in ([], ["e"]):
        answers = model.generate_answer(videos, questions, max_new_tokens=10, until=until)
        alone = [model.generate_answer(v, q, max_new_tokens=10, until=until) for v, q in zip(videos, questions)]
        assert answers == alone
    with pytest.raises(ValueError, match="batch sizes differ"):
        model.generate_answer(videos[:2], questions, max_new_tokens=2)
