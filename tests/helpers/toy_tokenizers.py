"""Tiny tokenizers of the kinds modern decoders ship, trained on the TOPA templates.

Llama-2's sentencepiece kind comes from ``topa_plugin.demo.toy.train_toy_tokenizer``; here are
the others: byte-level BPE (Llama-3 and Qwen's tiktoken-style vocabularies, with or without a
BOS token) and Gemma's sentencepiece (no dummy prefix, ``<pad>``=0, ``<eos>``=1, ``<bos>``=2).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

TEMPLATE_TEXT = [
    "Instruction: Choose the correct answer based on the video and question.\nVideo:",
    "Instruction: Generate a summary for the video.\nVideo:",
    "Instruction: Predict the answer based on the video and question.\nVideo:",
    ("Question: What did the person do after picking up the knife?\nChoices: \n(A) cut the onion\n(B) washed the pan\n"
    "Answer: The correct choice is (A)"),
    "\nDescription: A person prepares a meal in a small kitchen.\n",
    "Question: What is the dog doing?\nAnswer: It runs around the yard.\n",
]


def byte_level_bpe_tokenizer(out_dir: str | Path, bos: str | None, eos: str, vocab_size: int = 400):
    """A tiktoken-style tokenizer (byte-level BPE, no unk) saved and loaded back with AutoTokenizer.

    ``bos`` None: no BOS token at all, as Qwen's tokenizers.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [token for token in (bos, eos) if token]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEMPLATE_TEXT * 5, trainer)
    if bos:  # Llama-3 adds <|begin_of_text|> through its post-processor
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos).save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def gemma_tokenizer(out_dir: str | Path, vocab_size: int = 400):
    """A Gemma-convention sentencepiece model loaded through transformers' GemmaTokenizer."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(TEMPLATE_TEXT), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, split_digits=True, add_dummy_prefix=False,
            pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
            unk_piece="<unk>", character_coverage=1.0, hard_vocab_limit=False, normalization_rule_name="identity",
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, num_threads=1, minloglevel=2,
        )
        shutil.copy(Path(tmp) / "tokenizer.model", out_dir / "tokenizer.model")
    (out_dir / "tokenizer_config.json").write_text('{"tokenizer_class": "GemmaTokenizer"}\n')
    return AutoTokenizer.from_pretrained(out_dir)
