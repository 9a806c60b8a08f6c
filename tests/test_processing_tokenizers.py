"""The TOPA templates under each tokenizer kind of the supported families (tiny tokenizers of the same kind).

sentencepiece with dummy prefix (Llama-2, Mistral, Phi3), byte-level BPE with a BOS token
(Llama-3, OLMo2), byte-level BPE without one (Qwen2/2.5/3), and Gemma's sentencepiece (no dummy
prefix, <bos>=2, <eos>=1).
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tests.helpers.toy_tokenizers import byte_level_bpe_tokenizer, gemma_tokenizer
from topa_plugin.processing import IGNORE_INDEX, TopaProcessor

MAX_FEATS = 4
QUESTION, OPTIONS = "what did the person do after picking up the knife", ["cut the onion", "washed the pan", "left"]
MC_HEAD = "Instruction: Choose the correct answer based on the video and question.\nVideo:"
MC_REST = (
    "Question: What did the person do after picking up the knife?\nChoices: \n(A) cut the onion\n(B) washed the pan\n"
    "(C) left\nAnswer: The correct choice is (B)"
)
# kind -> (BOS token text or None, EOS token text)
KINDS = {
    "llama2-sentencepiece": ("<s>", "</s>"),
    "llama3-bpe": ("<|begin_of_text|>", "<|end_of_text|>"),
    "qwen-bpe": (None, "<|endoftext|>"),
    "gemma-sentencepiece": ("<bos>", "<eos>"),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request, toy_tokenizer_dir, tmp_path_factory):
    """(kind name, tokenizer, processor)."""
    name = request.param
    out = tmp_path_factory.mktemp(name)
    if name == "llama2-sentencepiece":
        tokenizer = AutoTokenizer.from_pretrained(toy_tokenizer_dir)
    elif name == "gemma-sentencepiece":
        tokenizer = gemma_tokenizer(out)
    else:
        tokenizer = byte_level_bpe_tokenizer(out, *KINDS[name])
    return name, tokenizer, TopaProcessor(tokenizer, max_feats=MAX_FEATS)


def supervised(prompt) -> list[int]:
    return [t for t in prompt.labels if t != IGNORE_INDEX]


def supervised_text(tokenizer, prompt) -> str:
    """The text of the supervised tokens before EOS, as it reads inside the prompt.

    Decoded with what precedes it in the rest string: sentencepiece drops the leading space
    of a decode that starts at a "▁"-prefixed piece.
    """
    body = prompt.video_start + MAX_FEATS + 1
    first = next(i for i, label in enumerate(prompt.labels) if label != IGNORE_INDEX)
    return tokenizer.decode(prompt.input_ids[body:-1])[len(tokenizer.decode(prompt.input_ids[body:first])) :]


def test_bos_and_eos_are_the_familys(kind):
    name, tokenizer, processor = kind
    bos, eos = KINDS[name]
    assert processor.bos_id == (None if bos is None else tokenizer.convert_tokens_to_ids(bos))
    assert processor.eos_id == tokenizer.convert_tokens_to_ids(eos)
    prompt = processor.encode_multiple_choice(QUESTION, OPTIONS, 1)
    ids = prompt.input_ids
    text_ids = ids[: prompt.video_start] + ids[prompt.video_start + MAX_FEATS :]  # without the video slots
    if bos is None:
        assert processor.bos_id not in text_ids and ids[: prompt.video_start] == processor.encode_text(MC_HEAD)
    else:
        assert ids[0] == processor.bos_id and text_ids.count(processor.bos_id) == 1
    assert ids[-1] == processor.eos_id and text_ids.count(processor.eos_id) == 1


def test_template_text_round_trips(kind):
    """Head and rest decode back to the template text: no stray or lost spaces around the video slots."""
    _, tokenizer, processor = kind
    prompt = processor.encode_multiple_choice(QUESTION, OPTIONS, 1)
    ids, start = prompt.input_ids, prompt.video_start
    head = ids[1:start] if processor.bos_id is not None else ids[:start]
    assert tokenizer.decode(head) == MC_HEAD
    assert ids[start + MAX_FEATS] == processor.newline_id and tokenizer.decode([processor.newline_id]) == "\n"
    assert tokenizer.decode(ids[start + MAX_FEATS + 1 : -1]) == MC_REST


def test_multiple_choice_answers_differ_only_at_the_letter(kind):
    _, tokenizer, processor = kind
    open_prompt = processor.encode_multiple_choice(QUESTION, OPTIONS, None).input_ids
    answered = [processor.encode_multiple_choice(QUESTION, OPTIONS, i) for i in range(len(OPTIONS))]
    for i, prompt in enumerate(answered):
        assert prompt.input_ids[: len(open_prompt)] == open_prompt
        assert supervised_text(tokenizer, prompt) == f" choice is ({'ABC'[i]})"
        assert supervised(prompt)[-1] == processor.eos_id
    tails = {tuple(p.input_ids[len(open_prompt) :]) for p in answered}
    assert len(tails) == len(OPTIONS)


def test_open_ended_answer_follows_answer_colon(kind):
    """Generation continues exactly where the supervised answer starts, and the answer ends with EOS."""
    _, tokenizer, processor = kind
    prompt = processor.encode_open_ended(QUESTION, None)
    generation = prompt.input_ids
    assert tokenizer.decode(generation[prompt.video_start + MAX_FEATS + 1 :]).endswith("\nAnswer:")
    trained = processor.encode_open_ended(QUESTION, "cut the onion")
    assert trained.input_ids[: len(generation)] == generation
    assert supervised(trained)[-1] == processor.eos_id
    text = supervised_text(tokenizer, trained)
    assert text.endswith(" cut the onion\n") and "Answer: cut the onion\n".endswith(text)


def test_tokenizer_without_eos_is_refused(tmp_path):
    tokenizer = byte_level_bpe_tokenizer(tmp_path, None, "<|endoftext|>")
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="has no eos token"):
        TopaProcessor(tokenizer)
