"""TopaProcessor: release token layout against sentencepiece, labels, HF BPE tokenizers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sentencepiece as spm
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast

from topa_plugin.processing import IGNORE_INDEX, TopaProcessor

MC_HEAD = "Instruction: Choose the correct answer based on the video and question.\nVideo:"
SUMMARY_HEAD = "Instruction: Generate a summary for the video.\nVideo:"
OPEN_HEAD = "Instruction: Predict the answer based on the video and question.\nVideo:"
OPTIONS = ["cut the onion", "washed  the pan", "opened the fridge </s>", "poured <s> water", "left the kitchen ü"]


@pytest.fixture(scope="module")
def sp(toy_tokenizer_dir):
    return spm.SentencePieceProcessor(model_file=str(toy_tokenizer_dir / "tokenizer.model"))


@pytest.fixture(scope="module")
def processor(toy_tokenizer_dir):
    return TopaProcessor(AutoTokenizer.from_pretrained(toy_tokenizer_dir), max_feats=10)


def release_ids(sp, head: str, rest: str, close: bool = True) -> list[int]:
    """``[bos] + sp.encode(head) + [unk]*10 + [<0x0A>] + sp.encode(rest) + [eos]``: the release layout."""
    tail = [sp.eos_id()] if close else []
    return [sp.bos_id()] + sp.encode(head) + [sp.unk_id()] * 10 + [sp.piece_to_id("<0x0A>")] + sp.encode(rest) + tail


def label_text(sp, prompt) -> list[str]:
    return [sp.id_to_piece(t) for t in prompt.labels if t != IGNORE_INDEX]


def test_newline_and_placeholder_come_from_the_tokenizer(processor, sp):
    assert processor.newline_id == sp.piece_to_id("<0x0A>")
    assert processor.placeholder_id == sp.unk_id()
    assert (processor.bos_id, processor.eos_id) == (sp.bos_id(), sp.eos_id())


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("what did HE do", "What did he do?"),
        ("  where is it.", "where is it."),  # capitalize() before strip(): a leading space stays lower-case
        ("Why?", "Why?"),
        ("how many cups ", "How many cups?"),
    ],
)
def test_normalize_question_release_rule(raw, expected):
    assert TopaProcessor.normalize_question(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("describe the task.", "Describe the task.?"),  # the release's TextVid rule: only "?" ends a question
        ("what did HE do", "What did he do?"),
        ("Why?", "Why?"),
    ],
)
def test_normalize_question_textvid_training_rule(raw, expected):
    assert TopaProcessor.normalize_question(raw, "always") == expected
    assert TopaProcessor.normalize_question(raw) == (raw.capitalize() if raw.endswith(".") else expected)


def test_question_mark_rule_reaches_the_prompts(processor):
    always = processor.encode_open_ended("describe the task.", "cut", question_mark="always")
    kept = processor.encode_open_ended("describe the task.", "cut")
    assert processor.decode(always.input_ids).count("task.?") == 1 and "task.?" not in processor.decode(kept.input_ids)
    options = ["a", "b"]
    prompt = processor.encode_multiple_choice("describe the task.", options, 1, question_mark="always")
    assert "Describe the task.?\nChoices" in processor.decode(prompt.input_ids)
    with pytest.raises(ValueError, match="question_mark='sometimes'"):
        processor.encode_multiple_choice("x", options, 0, question_mark="sometimes")


def test_normalize_question_rejects_empty():
    with pytest.raises(ValueError, match="empty question"):
        TopaProcessor.normalize_question("   ")


@pytest.mark.parametrize("answer", [0, 3])
def test_multiple_choice_matches_sentencepiece_layout(processor, sp, answer):
    prompt = processor.encode_multiple_choice("what did the person  do after <unk> cutting", OPTIONS, answer)
    letter = "ABCDE"[answer]
    rest = (
        "Question: What did the person  do after <unk> cutting?\nChoices: \n"
        + "".join(f"({'ABCDE'[i]}) {o}\n" for i, o in enumerate(OPTIONS))
        + f"Answer: The correct choice is ({letter})"
    )
    assert prompt.input_ids == release_ids(sp, MC_HEAD, rest)
    assert prompt.video_start == 1 + len(sp.encode(MC_HEAD))
    # the release supervises from the token after "Answer: The correct" through </s>
    assert "".join(label_text(sp, prompt)).replace("\u2581", " ") == f" choice is ({letter})</s>"
    assert len(prompt.labels) == len(prompt.input_ids)


def test_multiple_choice_without_answer_is_an_open_prompt(processor, sp):
    prompt = processor.encode_multiple_choice("what?", OPTIONS[:2], None)
    rest = "Question: What?\nChoices: \n(A) cut the onion\n(B) washed  the pan\nAnswer: The correct choice is"
    assert prompt.input_ids == release_ids(sp, MC_HEAD, rest, close=False)
    assert set(prompt.labels) == {IGNORE_INDEX}
    with pytest.raises(ValueError, match="out of range"):
        processor.encode_multiple_choice("what?", OPTIONS[:2], 2)


def test_summary_layout_and_labels(processor, sp):
    prompt = processor.encode_summary("A man slices bread, then  eats it.")
    assert prompt.input_ids == release_ids(sp, SUMMARY_HEAD, "\nDescription: A man slices bread, then  eats it.\n")
    assert label_text(sp, prompt)[0] == ":" and label_text(sp, prompt)[-1] == "</s>"
    context = processor.encode_summary(None)
    assert context.input_ids == release_ids(sp, SUMMARY_HEAD, "\nDescription:", close=False)


def test_open_ended_layout_labels_and_generation_prefix(processor, sp):
    prompt = processor.encode_open_ended("what is he holding", "  a red cup ")
    assert prompt.input_ids == release_ids(sp, OPEN_HEAD, "Question: What is he holding?\nAnswer: a red cup\n")
    labels = label_text(sp, prompt)
    assert labels[0] == ":" and labels[-2:] == ["<0x0A>", "</s>"]
    context = processor.encode_open_ended("what is he holding")
    assert prompt.input_ids[: len(context.input_ids)] == context.input_ids
    assert prompt.video_start == context.video_start == 1 + len(sp.encode(OPEN_HEAD))


def test_loading_from_a_plugin_directory_logs_no_model_type_warning(processor, toy_llama_dir, tmp_path):
    """AutoTokenizer reads the directory's TOPA config.json: in a fresh interpreter (where nothing
    registered "topa" with AutoConfig yet) that used to log a model-type mismatch warning."""
    from topa_plugin.configuration import TopaConfig

    TopaConfig(text_config=AutoConfig.from_pretrained(toy_llama_dir).to_dict()).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    code = (
        "import sys\nfrom topa_plugin.processing import TopaProcessor\n"
        "print(TopaProcessor.from_pretrained(sys.argv[1]).newline_id)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(processor.newline_id)]
    assert "to instantiate a model of type" not in done.stderr


def test_save_and_load_keep_settings(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = TopaProcessor.from_pretrained(tmp_path)
    assert loaded.max_feats == 10 and loaded.newline_id == processor.newline_id
    prompt = processor.encode_open_ended("why", "because")
    assert loaded.encode_open_ended("why", "because") == prompt


def _byte_level_bpe_tokenizer(tmp_path) -> PreTrainedTokenizerFast:
    """A tiny Llama-3-style tokenizer: byte-level BPE, no unk, <|begin_of_text|>/<|end_of_text|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = [MC_HEAD, SUMMARY_HEAD, OPEN_HEAD, "Question: What?\nChoices: \n(A) x\nAnswer: The correct choice is (A)"]
    tokenizer.train_from_iterator(text * 5, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"
    )
    fast.save_pretrained(tmp_path)
    return AutoTokenizer.from_pretrained(tmp_path)


def test_byte_level_bpe_tokenizer(tmp_path):
    tokenizer = _byte_level_bpe_tokenizer(tmp_path)
    processor = TopaProcessor(tokenizer, max_feats=4)
    bos, eos = tokenizer.convert_tokens_to_ids(["<|begin_of_text|>", "<|end_of_text|>"])
    newline = tokenizer.convert_tokens_to_ids("\u010a")  # byte-level "\n"
    assert processor.newline_id == newline and processor.placeholder_id == eos
    prompt = processor.encode_multiple_choice("what?", ["x", "y"], 1)
    head = tokenizer.encode(MC_HEAD, add_special_tokens=False)
    rest = tokenizer.encode("Question: What?\nChoices: \n(A) x\n(B) y\nAnswer: The correct choice is (B)", add_special_tokens=False)
    assert prompt.input_ids == [bos] + head + [eos] * 4 + [newline] + rest + [eos]
    assert prompt.video_start == 1 + len(head)
    assert tokenizer.decode([t for t in prompt.labels if t != IGNORE_INDEX]) == " choice is (B)<|end_of_text|>"


def test_tokenizer_without_ids_is_refused():
    class Empty:
        name_or_path = "broken-tokenizer"
        bos_token_id, eos_token_id, unk_token_id, pad_token_id = 1, 2, 0, None

        def encode(self, text, **kwargs):
            return []

    with pytest.raises(ValueError, match="broken-tokenizer.*returns no ids"):
        TopaProcessor(Empty())


def test_count_tokens_equals_encoding_each_text(processor):
    texts = ["Question: What is it?\nAnswer", "</s> plain <s> text", "é 你好 \n\n tabs\tand  spaces", "", "x" * 300]
    assert processor.count_tokens(texts) == [len(processor.encode_text(t)) for t in texts]
