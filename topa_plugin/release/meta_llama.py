"""Meta-format Llama to Hugging Face: weight shards, config, the rotary permutation and the
sentencepiece tokenizer. Generic; the TOPA release's own files are mapped in ``release.convert``."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from topa_plugin.utils.atomic import share_like_new_files
from topa_plugin.utils.errors import TopaInputError
from topa_plugin.utils.safeload import load_release_pickle


class ConversionError(TopaInputError, ValueError):
    """The release files do not fit together; the message names the file and the key or field."""


# Meta model-parallel layout: how each weight is split across consolidated.*.pth shards.
_SPLIT_DIM = {
    "tok_embeddings.weight": 1,
    "output.weight": 0,
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "feed_forward.w1.weight": 0,
    "feed_forward.w3.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w2.weight": 1,
    "norm.weight": None,
    "attention_norm.weight": None,
    "ffn_norm.weight": None,
}


_META_TO_HF = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


_DERIVED_META_KEYS = {"rope.freqs"}  # Llama-1 shards carry the rotary table; it is recomputed, not a weight


_LAYER_KEY = re.compile(r"layers\.(\d+)\.(.+)")


@dataclass
class MetaFiles:
    params: Path
    shards: list[Path]
    tokenizer: Path


def find_meta_files(llama_dir: str | Path) -> MetaFiles:
    """params.json and consolidated.*.pth in ``llama_dir``; tokenizer.model there or in its parent."""
    llama_dir = Path(llama_dir)
    if not llama_dir.is_dir():
        raise ConversionError(f"{llama_dir}: --llama-dir is not a directory")
    params = llama_dir / "params.json"
    if not params.is_file():
        raise ConversionError(f"{params}: missing (a Meta-format Llama directory holds params.json)")
    shards = sorted(llama_dir.glob("consolidated.*.pth"))
    if not shards:
        raise ConversionError(f"{llama_dir}: no consolidated.*.pth weight shards")
    candidates = [llama_dir / "tokenizer.model", llama_dir.parent / "tokenizer.model"]
    tokenizer = next((c for c in candidates if c.is_file()), None)
    if tokenizer is None:
        raise ConversionError(f"tokenizer.model not found in {candidates[0].parent} or {candidates[1].parent}")
    return MetaFiles(params, shards, tokenizer)


def _split_rule(key: str, source: Path):
    match = _LAYER_KEY.fullmatch(key)
    suffix = match.group(2) if match else key
    if suffix not in _SPLIT_DIM:
        raise ConversionError(f"{source}: unexpected weight {key!r} in a Meta Llama shard")
    return _SPLIT_DIM[suffix]


def load_meta_state_dict(shards: list[Path], progress: bool = True) -> dict[str, torch.Tensor]:
    """Load (memory-mapped) and merge Meta model-parallel shards into one state dict."""
    from tqdm.auto import tqdm

    loaded = []
    for shard in tqdm(shards, desc="loading Meta shards", unit="shard", disable=not progress):
        state = load_release_pickle(shard, mmap=True)
        if not isinstance(state, dict):
            raise ConversionError(f"{shard}: expected a state dict, got {type(state).__name__}")
        loaded.append({k: v for k, v in state.items() if k not in _DERIVED_META_KEYS})
    keys = set(loaded[0])
    for shard, state in zip(shards[1:], loaded[1:]):
        if set(state) != keys:
            diff = sorted(keys.symmetric_difference(state))[:5]
            raise ConversionError(f"{shard}: its keys differ from {shards[0].name}'s (e.g. {diff})")
    merged = {}
    for key in tqdm(sorted(keys), desc="merging shards", unit="tensor", disable=not progress or len(shards) == 1):
        dim = _split_rule(key, shards[0])
        parts = [state[key] for state in loaded]
        if len(parts) == 1:
            merged[key] = parts[0]
        elif dim is None:
            for shard, part in zip(shards[1:], parts[1:]):
                if not torch.equal(part, parts[0]):
                    raise ConversionError(f"{shard}: replicated weight {key!r} differs from {shards[0].name}'s")
            merged[key] = parts[0]
        else:
            merged[key] = torch.cat(parts, dim=dim)
    return merged


def _ffn_hidden_size(params: dict) -> int:
    """Meta's SwiGLU width rule: 2/3 of 4*dim, times ffn_dim_multiplier, rounded up to multiple_of."""
    hidden = int(2 * 4 * params["dim"] / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    multiple_of = params.get("multiple_of", 256)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def llama_config_from_params(params: dict, sp, source: Path):
    """A transformers LlamaConfig equivalent to Meta's params.json; vocabulary and bos/eos from ``sp``."""
    from transformers import LlamaConfig

    for field in ("dim", "n_layers", "n_heads"):
        if field not in params:
            raise ConversionError(f"{source}: missing field {field!r}")
    if params.get("use_scaled_rope"):
        raise ConversionError(
            f"{source}: use_scaled_rope (Llama-3.1) is not supported by --llama-dir; convert with --base HF_MODEL"
        )
    if params["dim"] % params["n_heads"]:
        raise ConversionError(f"{source}: dim={params['dim']} is not divisible by n_heads={params['n_heads']}")
    vocab_size = sp.get_piece_size()
    if params.get("vocab_size", -1) not in (-1, vocab_size):
        raise ConversionError(f"{source}: vocab_size={params['vocab_size']} but tokenizer.model has {vocab_size} pieces")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=params["dim"],
        intermediate_size=_ffn_hidden_size(params),
        num_hidden_layers=params["n_layers"],
        num_attention_heads=params["n_heads"],
        num_key_value_heads=params.get("n_kv_heads") or params["n_heads"],
        max_position_embeddings=params.get("max_seq_len", 4096),
        rms_norm_eps=params.get("norm_eps", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": float(params.get("rope_theta", 10000.0))},
        bos_token_id=sp.bos_id(),
        eos_token_id=sp.eos_id(),
        tie_word_embeddings=False,
    )


def _interleaved_to_rotate_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows so HF's rotate-half rotary equals Meta's interleaved-pair rotary."""
    rows, cols = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _expected_meta_shapes(config) -> dict[str, tuple[int, ...]]:
    d, ffn, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    head_dim = d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    shapes = {"tok_embeddings.weight": (vocab, d), "output.weight": (vocab, d), "norm.weight": (d,)}
    for i in range(config.num_hidden_layers):
        shapes.update({
            f"layers.{i}.attention.wq.weight": (d, d),
            f"layers.{i}.attention.wk.weight": (kv, d),
            f"layers.{i}.attention.wv.weight": (kv, d),
            f"layers.{i}.attention.wo.weight": (d, d),
            f"layers.{i}.feed_forward.w1.weight": (ffn, d),
            f"layers.{i}.feed_forward.w2.weight": (d, ffn),
            f"layers.{i}.feed_forward.w3.weight": (ffn, d),
            f"layers.{i}.attention_norm.weight": (d,),
            f"layers.{i}.ffn_norm.weight": (d,),
        })
    return shapes


def meta_to_hf_state_dict(meta: dict[str, torch.Tensor], config, source: str | Path, dtype: torch.dtype | None = None):
    """Rename Meta keys to LlamaForCausalLM's and permute wq/wk; checks every key and shape."""
    expected = _expected_meta_shapes(config)
    missing = sorted(set(expected) - set(meta))
    if missing:
        raise ConversionError(f"{source}: missing weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unexpected = sorted(set(meta) - set(expected))
    if unexpected:
        raise ConversionError(f"{source}: unexpected weights {unexpected[:5]} for a {config.num_hidden_layers}-layer model")
    hf = {}
    for key, shape in expected.items():
        tensor = meta[key]
        if tuple(tensor.shape) != shape:
            raise ConversionError(f"{source}: {key} has shape {tuple(tensor.shape)}, params.json and tokenizer.model imply {shape}")
        match = _LAYER_KEY.fullmatch(key)
        suffix = match.group(2) if match else key
        if suffix == "attention.wq.weight":
            tensor = _interleaved_to_rotate_half(tensor, config.num_attention_heads)
        elif suffix == "attention.wk.weight":
            tensor = _interleaved_to_rotate_half(tensor, config.num_key_value_heads)
        name = _META_TO_HF[suffix] if match is None else f"model.layers.{match.group(1)}.{_META_TO_HF[suffix]}"
        hf[name] = tensor.to(dtype or tensor.dtype).contiguous()
    return hf


# Probe strings for the tokenizer check: template text, leading/double spaces, newlines, digits, non-ASCII.
_TOKENIZER_PROBES = (
    "Instruction: Choose the correct answer based on the video and question.\nVideo:",
    "Question: What is the man doing?\nChoices: \n(A) cooking\n(B) running\nAnswer: The correct choice is (A)",
    " leading space",
    "  two  spaces\tand tab",
    "\nDescription: ünïcödé 漢字 3.14159\n",
)


def hf_tokenizer_from_sentencepiece(model_file: str | Path):
    """A fast HF tokenizer that encodes exactly like ``SentencePieceProcessor`` (+ ``<s>`` as BOS).

    transformers 5's LlamaTokenizer uses a Metaspace pre-tokenizer that merges a leading space into
    the dummy prefix; sentencepiece (and the release) keep it. The sentencepiece normalisation is
    rebuilt explicitly (prepend "▁", spaces to "▁") and checked on probe strings.
    """
    from tokenizers import decoders, normalizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    model_file = Path(model_file)
    sp = _sentencepiece(model_file)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(model_file, Path(tmp) / "tokenizer.model")
        backend = AutoTokenizer.from_pretrained(tmp).backend_tokenizer
    dummy_prefix = sp.encode("x", out_type=str)[0].startswith("▁")
    steps = [normalizers.Prepend("▁")] if dummy_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    bos, eos, unk = (sp.id_to_piece(i) for i in (sp.bos_id(), sp.eos_id(), sp.unk_id()))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, sp.bos_id())]
    )
    strip = [decoders.Strip(content=" ", left=1)] if dummy_prefix else []
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk)
    for text in _TOKENIZER_PROBES:
        ours, theirs = tokenizer(text, add_special_tokens=False).input_ids, sp.encode(text)
        if ours != theirs:
            raise ConversionError(f"{model_file}: HF tokenizer encodes {text!r} as {ours}, sentencepiece as {theirs}")
    return tokenizer


def _sentencepiece(model_file: Path):
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(model_file))
    except (RuntimeError, OSError) as err:
        raise ConversionError(
            f"{model_file}: not a sentencepiece model ({err}); for a tiktoken (Llama-3) release convert with --base HF_MODEL"
        ) from err


def meta_llama_config(files: MetaFiles):
    """LlamaConfig of a Meta directory (params.json + tokenizer.model's vocabulary and bos/eos)."""
    try:
        params = json.loads(files.params.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{files.params}: invalid JSON ({err})") from err
    return llama_config_from_params(params, _sentencepiece(files.tokenizer), files.params)


def write_hf_base(files: MetaFiles, config, out_dir: str | Path, dtype: torch.dtype | None = None, progress: bool = True):
    """Write the Meta-format Llama as a Hugging Face LlamaForCausalLM directory (+ tokenizer files).

    ``dtype`` None keeps the shards' dtype. Returns the model (weights assigned without a random
    init) and its tokenizer.
    """
    from transformers import LlamaForCausalLM

    meta = load_meta_state_dict(files.shards, progress=progress)
    config.dtype = dtype or next(iter(meta.values())).dtype
    label = files.shards[0] if len(files.shards) == 1 else files.shards[0].parent / "consolidated.*.pth"
    state = meta_to_hf_state_dict(meta, config, label, config.dtype)
    with torch.device("meta"):
        llm = LlamaForCausalLM(config)
    llm.load_state_dict(state, strict=True, assign=True)
    tokenizer = hf_tokenizer_from_sentencepiece(files.tokenizer)
    out_dir = Path(out_dir)
    llm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    share_like_new_files(out_dir)
    shutil.copy(files.tokenizer, out_dir / "tokenizer.model")
    return llm, tokenizer


def meta_device_llm(config):
    """A causal LM of ``config`` with parameters on the meta device (no memory, no random init)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
