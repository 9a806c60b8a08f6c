"""Toy-scale building blocks: a sentencepiece tokenizer, a random Llama, a random CLIP, mp4 files.

No weights can be downloaded in the offline demo or in CI, so the demo and the tests build
small random models here and then load them back through the same public code paths a user
hits with real weights (``AutoTokenizer``, ``from_pretrained``, ``open_clip``, PyAV).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from topa_plugin.release.meta_llama import hf_tokenizer_from_sentencepiece

# Text the toy tokenizer is trained on besides the caller's: the prompt templates, so that
# every template word tokenizes into a handful of pieces.
_TEMPLATE_TEXT = """\
Instruction: Choose the correct answer based on the video and question.
Video:
Question: What did the person do after picking up the knife?
Choices:
(A) cut the onion
(B) washed the pan
(C) opened the fridge
(D) poured the water
(E) left the kitchen
Answer: The correct choice is (A)
Instruction: Generate a summary for the video.
Description: A person prepares a meal in a small kitchen, cutting vegetables and stirring a pot.
Instruction: Predict the answer based on the video and question.
Answer: They cut the onion and then washed the pan.
The camera wearer walks to the table, picks up a cup, and drinks some water.
A player dribbles the ball down the court, passes it, and shoots at the basket.
Someone mows the lawn in the garden while a dog runs around the yard.
0123456789 first second third then after before finally while during
"""


def train_toy_tokenizer(out_dir: str | Path, extra_text: tuple[str, ...] = (), vocab_size: int = 512) -> Path:
    """Train a Llama-2-style sentencepiece BPE model and save it loadable by ``AutoTokenizer``.

    Conventions follow Llama-2's ``tokenizer.model``: ``<unk>``=0, ``<s>``=1, ``</s>``=2, byte
    fallback (so ``"\\n"`` is the piece ``<0x0A>``), digits split, dummy prefix on.
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join([_TEMPLATE_TEXT, *extra_text]), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "tokenizer"),
            vocab_size=vocab_size,
            model_type="bpe",
            byte_fallback=True,
            split_digits=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            character_coverage=1.0,
            hard_vocab_limit=False,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            num_threads=1,
            minloglevel=2,
        )
        shutil.copy(Path(tmp) / "tokenizer.model", out_dir / "tokenizer.model")
    # The same route as a converted release: an HF tokenizer proven to encode like sentencepiece.
    hf_tokenizer_from_sentencepiece(out_dir / "tokenizer.model").save_pretrained(out_dir)
    return out_dir / "tokenizer.model"


def toy_llama_config(
    vocab_size: int,
    hidden_size: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
):
    """A tiny ``LlamaConfig`` with Llama-2 token conventions."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )


def build_toy_llama(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int | None = None,
    seed: int = 0,
    fan_in_init: bool = False,
) -> Path:
    """Save a random ``LlamaForCausalLM`` (plus the tokenizer files) as a Hugging Face model directory.

    ``fan_in_init``: see ``fan_in_rescale``.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = toy_llama_config(len(tokenizer), hidden_size, layers, heads, kv_heads)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init of a 64-d model gives near-uniform logits; a larger embedding scale makes
    # the toy model's choices differ measurably, which the fidelity tests need.
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    if fan_in_init:
        fan_in_rescale(model, torch.Generator().manual_seed(seed))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def fan_in_rescale(model: torch.nn.Module, generator: torch.Generator | None = None) -> None:
    """Redraw every linear weight with std 1/sqrt(fan_in) and sharpen the output head 4x.

    With Hugging Face's 0.02-std init every sublayer of a 64-d model vanishes next to the
    residual stream: nothing it reads (a video, a question, gates, a trained adapter) changes
    its logits, answers or loss visibly.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / module.in_features**0.5)
        model.get_output_embeddings().weight.mul_(4.0)


def toy_clip_config(embed_dim: int = 768, text_width: int = 64) -> dict:
    """An open_clip model config for a tiny ViT CLIP with the real text tokenizer and ``embed_dim`` outputs."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": text_width, "heads": 2, "layers": 2},
    }


def build_toy_clip(out_dir: str | Path, embed_dim: int = 768, seed: int = 0, name: str = "topa-toy-clip",
                   text_width: int = 64) -> tuple[Path, Path]:
    """Write a tiny random open_clip CLIP as (model-config JSON, weights file).

    The config file's stem is the model name open_clip registers it under.
    """
    import open_clip
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / f"{name}.json"
    config = toy_clip_config(embed_dim, text_width)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(seed)
    model = open_clip.CLIP(**config)
    weights_path = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    return config_path, weights_path


_DETERMINISTIC_X264 = {"threads": "1", "qp": "20", "x264-params": "aq-mode=0:mbtree=0"}


def write_toy_video(path: str | Path, n_frames: int = 24, size: int = 64, fps: int = 8, seed: int = 0) -> Path:
    """Encode a real H.264 mp4 with PyAV: a coloured square moving over a changing background.

    The bytes are a function of the arguments (feature caches key on content): one encoder
    thread and constant-QP coding without adaptive quantisation, whose float rate control
    otherwise varies with the process's floating-point state (importing torch changes it).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, size=3)
    square = rng.integers(0, 256, size=3)
    side = size // 4
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options=_DETERMINISTIC_X264)
        stream.width = size
        stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            frame = np.empty((size, size, 3), dtype=np.uint8)
            frame[:] = (background + 7 * i) % 256
            x = (i * (size - side)) // max(n_frames - 1, 1)
            y = (size - side) // 2
            frame[y : y + side, x : x + side] = square
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
