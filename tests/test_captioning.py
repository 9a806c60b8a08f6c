"""The authors' captioning protocol, token for token on a toy sentencepiece tokenizer, against an
independent re-implementation of their notebook loop (full recompute, no cache)."""

from __future__ import annotations

import pytest
import torch

from topa_plugin.captioning import (
    PROTOCOLS,
    SUPPRESSED_LOGIT,
    caption_video,
    encode_caption_prompt,
    word_start_id,
)


@pytest.fixture(scope="module")
def caption_model(tmp_path_factory):
    from tests.helpers.lmms_fixtures import build_caption_checkpoint
    from topa_plugin.modeling import TopaForCausalLM

    root = tmp_path_factory.mktemp("caption")
    model = TopaForCausalLM.from_pretrained(build_caption_checkpoint(root))
    return model, root / "tokenizer" / "tokenizer.model"


def sentencepiece(path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_prompt_is_the_notebooks_token_for_token(caption_model, name):
    model, sp_path = caption_model
    sp, protocol = sentencepiece(sp_path), PROTOCOLS[name]
    prompt = encode_caption_prompt(model.processor, protocol)
    head = [sp.bos_id(), *sp.encode(f"Instruction: {protocol.instruction}\nVideo:")]
    rest = sp.encode(protocol.rest)
    placeholder = model.processor.placeholder_id
    assert prompt.input_ids == head + [placeholder] * model.config.max_feats + rest
    assert prompt.video_start == len(head)
    # the rest is one piece after the video: "▁", "<0x0A>", ... (training puts "<0x0A>" first)
    assert [sp.id_to_piece(i) for i in rest[:2]] == ["▁", "<0x0A>"]
    assert prompt.suppressed_ids == tuple(sp.piece_to_id(f"▁{w}") for w in protocol.suppressed_words)


def test_suppressed_words_are_the_word_start_pieces(caption_model):
    model, sp_path = caption_model
    sp = sentencepiece(sp_path)
    assert word_start_id(model.processor, "how") == sp.piece_to_id("▁how") != sp.unk_id()
    assert word_start_id(model.processor, "How") == sp.piece_to_id("▁How") != sp.unk_id()
    with pytest.raises(ValueError, match="no single token for the word 'xylophonically'"):
        word_start_id(model.processor, "xylophonically")


def notebook_loop(model, protocol, features, steps):
    """The notebook's decoding: the whole sequence re-run every step, suppressed logits set to
    SUPPRESSED_LOGIT, argmax appended, no stop."""
    prompt = encode_caption_prompt(model.processor, protocol)
    video = model.prepare_video(features, protocol.use_memory)[None]
    ids = list(prompt.input_ids)
    for _ in range(steps):
        logits = model(torch.tensor([ids]), video, prompt.video_start).logits[0, -1].float().clone()
        logits[list(prompt.suppressed_ids)] = SUPPRESSED_LOGIT
        ids.append(int(logits.argmax()))
    return ids[len(prompt.input_ids):]


def bias_logits(model, token_ids, value):
    """Give the LM head a bias that makes ``token_ids`` win every step (a real model change)."""
    head = model.llm.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[list(token_ids)] = value
    model.llm.lm_head = biased
    return head


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_caption_is_the_notebook_loop_text_after_the_prefix(caption_model, name):
    model, _ = caption_model
    protocol = PROTOCOLS[name]
    features = torch.randn(7, model.config.feature_dim, generator=torch.Generator().manual_seed(3))
    generated = notebook_loop(model, protocol, features, protocol.max_new_tokens)
    processor = model.processor
    full = processor.decode(processor.encode_text(protocol.rest) + generated)
    assert caption_video(model, features, name) == full.split(protocol.answer_prefix)[1].strip().split(".")[0]


def test_suppression_and_no_stop_at_end_of_sequence(caption_model):
    model, _ = caption_model
    protocol = PROTOCOLS["msrvtt"]
    prompt = encode_caption_prompt(model.processor, protocol)
    features = torch.randn(5, model.config.feature_dim, generator=torch.Generator().manual_seed(4))
    eos = model.processor.eos_id
    original = bias_logits(model, [*prompt.suppressed_ids, eos], 1e4)
    try:
        from topa_plugin.captioning import decode_release

        video = model.prepare_video(features, protocol.use_memory)[None]
        generated = decode_release(model, prompt, video, protocol.max_new_tokens)
        # "how" outweighs everything but is suppressed; </s> wins every step and decoding goes on
        assert generated == [eos] * protocol.max_new_tokens
        assert generated == notebook_loop(model, protocol, features, protocol.max_new_tokens)
        assert caption_video(model, features, protocol, max_new_tokens=3) == ""
    finally:
        model.llm.lm_head = original


def test_a_repeated_prefix_ends_the_vatex_caption(caption_model):
    """The release removed a repeated "The video shows" from the middle of the text; ours ends the caption there."""
    from topa_plugin.captioning import caption_text

    model, _ = caption_model
    processor, protocol = model.processor, PROTOCOLS["vatex"]
    generated = processor.encode_text(" a man cooks The video shows a pan. more")
    assert caption_text(processor, protocol, generated) == "a man cooks"
