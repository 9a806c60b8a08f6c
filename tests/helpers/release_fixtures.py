"""Builders of a tiny checkpoint in the authors' release layout, plus a Meta-format reference forward.

Layout (as the release expects it)::

    root/llama/tokenizer.model             sentencepiece, trained here
    root/llama/7B/params.json              Meta params
    root/llama/7B/consolidated.0N.pth      Meta key names, interleaved rotary, model-parallel shards
    root/checkpoint_3.pth                  {"model", "optimizer", "epoch", "scaler", "args"}
    root/memory.pkl                        plain pickle.dump of a float16 tensor

The reference forward below works on the Meta weights and release trainables directly, so a
comparison with the converted model checks renaming, permutation and gate mapping end to end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from topa_plugin.demo.toy import train_toy_tokenizer

COLUMN_PARALLEL = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                   "feed_forward.w1.weight", "feed_forward.w3.weight")
ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight")


@dataclass
class ReleaseFiles:
    root: Path
    llama_dir: Path
    tokenizer: Path
    checkpoint: Path
    memory: Path
    params: dict
    meta: dict          # merged Meta state dict (float32)
    trainables: dict    # release names -> float32 tensors
    memory_tensor: torch.Tensor
    args: argparse.Namespace


def ffn_hidden(params: dict) -> int:
    hidden = int(2 * 4 * params["dim"] / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    m = params["multiple_of"]
    return m * ((hidden + m - 1) // m)


def random_meta_weights(params: dict, vocab: int, generator: torch.Generator) -> dict:
    d, n_layers, heads = params["dim"], params["n_layers"], params["n_heads"]
    kv = (params.get("n_kv_heads") or heads) * (d // heads)
    ffn = ffn_hidden(params)

    def rnd(*shape, std=None):
        return torch.randn(*shape, generator=generator) * (std if std is not None else 1 / math.sqrt(shape[-1]))

    # Embedding scale 1 (as toy.build_toy_llama) so the tiny model's choices differ measurably.
    sd = {"tok_embeddings.weight": rnd(vocab, d, std=1.0), "output.weight": rnd(vocab, d),
          "norm.weight": 1 + 0.1 * rnd(d, std=1.0)}
    for i in range(n_layers):
        p = f"layers.{i}."
        sd.update({
            p + "attention.wq.weight": rnd(d, d), p + "attention.wk.weight": rnd(kv, d),
            p + "attention.wv.weight": rnd(kv, d), p + "attention.wo.weight": rnd(d, d),
            p + "feed_forward.w1.weight": rnd(ffn, d), p + "feed_forward.w2.weight": rnd(d, ffn),
            p + "feed_forward.w3.weight": rnd(ffn, d),
            p + "attention_norm.weight": 1 + 0.1 * rnd(d, std=1.0), p + "ffn_norm.weight": 1 + 0.1 * rnd(d, std=1.0),
        })
    return sd


def split_meta_shards(sd: dict, n_shards: int) -> list[dict]:
    """Split a full Meta state dict the way Meta's model-parallel checkpoints are split."""
    def dim_of(key):
        if key == "tok_embeddings.weight" or key.endswith(ROW_PARALLEL):
            return 1
        if key == "output.weight" or key.endswith(COLUMN_PARALLEL):
            return 0
        return None

    shards = [{} for _ in range(n_shards)]
    for key, tensor in sd.items():
        dim = dim_of(key)
        parts = [tensor] * n_shards if dim is None else tensor.chunk(n_shards, dim=dim)
        for shard, part in zip(shards, parts):
            shard[key] = part.clone()
    return shards


def release_trainables(params: dict, adapter_len: int, adapter_layer: int, max_feats: int, feature_dim: int,
                       generator: torch.Generator) -> dict:
    """Random trainables with non-zero gates, for every layer (the release saves all layers' gates)."""
    d, heads = params["dim"], params["n_heads"]
    out = {
        "adapter_query.weight": torch.randn(adapter_len * adapter_layer, d, generator=generator),
        "visual_proj.weight": torch.randn(d, feature_dim, generator=generator) / math.sqrt(feature_dim) * 4,
        "temporal_emb.weight": torch.randn(max_feats, d, generator=generator),
    }
    for i in range(params["n_layers"]):
        out[f"layers.{i}.attention.gate1"] = torch.randn(1, heads, 1, 1, generator=generator)
        out[f"layers.{i}.attention.gate2"] = -3.5 + torch.randn(1, heads, 1, 1, generator=generator)
    return out


def release_args(llama_dir: Path, adapter_len: int, adapter_layer: int, max_feats: int) -> argparse.Namespace:
    """The argparse.Namespace the release pickles into its checkpoints (a representative subset)."""
    return argparse.Namespace(
        batch_size=18, epochs=20, accum_iter=4, llama_model_path=str(llama_dir.parent) + "/", model="7B",
        adapter_layer=adapter_layer, adapter_len=adapter_len, max_seq_len=150, max_feats=max_feats,
        weight_decay=0.1, lr=None, blr=5e-3, min_lr=0.0, warmup_epochs=1, dataset="textvid",
        output_dir="./output", device="cuda", seed=0, bias=3.5, tau=100.0, memory=False, textvid=True,
        variance=0.0, llama2=True, llama3=False, answer_balance=True, distributed=False,
    )


def save_release_checkpoint(path: Path, trainables: dict, args: argparse.Namespace) -> None:
    """torch.save like the release: nn.Parameters, a real AdamW state after one step, epoch, scaler, args."""
    params = {k: torch.nn.Parameter(v.clone()) for k, v in trainables.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    loss = sum((p.float() ** 2).sum() for p in params.values())
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # the stored weights are the ones under test, not the stepped ones
        for key, p in params.items():
            p.copy_(trainables[key])
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}
    torch.save({"model": params, "optimizer": optimizer.state_dict(), "epoch": 3, "scaler": scaler, "args": args}, path)


def build_release(root: str | Path, *, dim: int = 64, n_layers: int = 4, n_heads: int = 4,
                  n_kv_heads: int | None = None, multiple_of: int = 32, ffn_dim_multiplier: float | None = None,
                  rope_theta: float | None = None, n_shards: int = 1, adapter_len: int = 5,
                  adapter_layer: int | None = None, max_feats: int = 10, feature_dim: int = 768,
                  memory_rows: int = 64, seed: int = 0, tokenizer_dir: str | Path | None = None) -> ReleaseFiles:
    """Write a tiny release-layout checkpoint under ``root``; return paths and the tensors written."""
    import sentencepiece as spm

    root = Path(root)
    generator = torch.Generator().manual_seed(seed)
    llama_root = root / "llama"
    llama_dir = llama_root / "7B"
    llama_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_toy_tokenizer(llama_root / "tok") if tokenizer_dir is None else Path(tokenizer_dir) / "tokenizer.model"
    (llama_root / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    tokenizer = llama_root / "tokenizer.model"
    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer)).get_piece_size()

    params = {"dim": dim, "multiple_of": multiple_of, "n_heads": n_heads, "n_layers": n_layers,
              "norm_eps": 1e-5, "vocab_size": -1}
    if n_kv_heads is not None:
        params["n_kv_heads"] = n_kv_heads
    if ffn_dim_multiplier is not None:
        params["ffn_dim_multiplier"] = ffn_dim_multiplier
    if rope_theta is not None:
        params["rope_theta"] = rope_theta
    (llama_dir / "params.json").write_text(json.dumps(params))
    meta = random_meta_weights(params, vocab, generator)
    for i, shard in enumerate(split_meta_shards(meta, n_shards)):
        torch.save({k: v.to(torch.bfloat16) for k, v in shard.items()}, llama_dir / f"consolidated.{i:02d}.pth")
    meta = {k: v.to(torch.bfloat16).float() for k, v in meta.items()}  # what the shards really hold

    adapter_layer = adapter_layer or n_layers
    trainables = release_trainables(params, adapter_len, adapter_layer, max_feats, feature_dim, generator)
    args = release_args(llama_dir, adapter_len, adapter_layer, max_feats)
    checkpoint = root / "checkpoint_3.pth"
    save_release_checkpoint(checkpoint, trainables, args)

    memory_tensor = F.normalize(torch.randn(memory_rows, feature_dim, generator=generator), dim=-1).half()
    memory = root / "memory.pkl"
    with open(memory, "wb") as f:
        pickle.dump(memory_tensor, f)
    return ReleaseFiles(root, llama_dir, tokenizer, checkpoint, memory, params, meta, trainables, memory_tensor, args)


# ---------------------------------------------------------------- malicious files


class _RunsCode:
    """Unpickling this calls os.system: the classic pickle attack."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _StorageSmuggler:
    """Unpickles through torch.storage._load_from_bytes, whose payload is itself a code-running pickle."""

    def __init__(self, marker: Path):
        self.payload = pickle.dumps(_RunsCode(marker), protocol=2)  # the protocol torch.save uses

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.payload,))


def write_malicious_checkpoint(path: Path, marker: Path, good: ReleaseFiles) -> Path:
    """A torch.save zip like the release's checkpoint with one code-running object inside."""
    torch.save({"model": good.trainables, "epoch": 3, "args": good.args, "extra": _RunsCode(marker)}, path)
    return path


def write_malicious_memory(path: Path, marker: Path, smuggle_storage: bool = False) -> Path:
    """A plain pickle (like memory.pkl) that runs code when loaded with pickle.load."""
    payload = _StorageSmuggler(marker) if smuggle_storage else _RunsCode(marker)
    with open(path, "wb") as f:
        pickle.dump(payload, f)
    return path


# ---------------------------------------------------------------- Meta-format reference forward


def _rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotary_interleaved(x, theta):
    """Meta's rotary on [L, H, hd]: consecutive pairs (x0, x1), (x2, x3) ... rotated as complex numbers."""
    seqlen, head_dim = x.shape[0], x.shape[-1]
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(seqlen, dtype=torch.float64), freqs)
    rot = torch.polar(torch.ones_like(angles), angles)[:, None, :]
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rot).flatten(-2)


def meta_logits(release: ReleaseFiles, tokens: list[int], video: torch.Tensor | None = None,
                video_start: int | None = None, topa: bool = True) -> torch.Tensor:
    """Logits [L, V] (float64) of one sequence through the Meta-format weights and release trainables.

    With ``topa``: ``video`` [max_feats, F] (prepared) fills the slots at ``video_start``; adapter
    slot s of ``args.adapter_layer`` uses rows s*adapter_len.. of adapter_query and the gates of
    layer ``n_layers - adapter_layer + s``. Unlike the release, all layers run (docs/method.md section 7).
    """
    meta = {k: v.double() for k, v in release.meta.items()}
    tr = {k: v.double() for k, v in release.trainables.items()}
    params = release.params
    d, heads, n_layers = params["dim"], params["n_heads"], params["n_layers"]
    kv_heads = params.get("n_kv_heads") or heads
    rep, hd, eps, theta = heads // kv_heads, d // heads, params["norm_eps"], params.get("rope_theta", 10000.0)
    adapter_len, adapter_layer = release.args.adapter_len, release.args.adapter_layer
    first_adapter = n_layers - adapter_layer if topa else n_layers
    h = meta["tok_embeddings.weight"][torch.tensor(tokens)].clone()
    if topa and video is not None:
        n = tr["temporal_emb.weight"].shape[0]
        h[video_start:video_start + n] = video.double() @ tr["visual_proj.weight"].T + tr["temporal_emb.weight"]
    seqlen = h.shape[0]
    causal = torch.full((seqlen, seqlen), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(n_layers):
        p = f"layers.{i}."
        x = _rms_norm(h, meta[p + "attention_norm.weight"], eps)
        q = _rotary_interleaved((x @ meta[p + "attention.wq.weight"].T).view(seqlen, heads, hd), theta)
        k = _rotary_interleaved((x @ meta[p + "attention.wk.weight"].T).view(seqlen, kv_heads, hd), theta)
        v = (x @ meta[p + "attention.wv.weight"].T).view(seqlen, kv_heads, hd)
        q, k, v = q.transpose(0, 1), k.repeat_interleave(rep, 1).transpose(0, 1), v.repeat_interleave(rep, 1).transpose(0, 1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + causal
        if i >= first_adapter and video is not None:
            n = tr["temporal_emb.weight"].shape[0]
            scores[:, video_start + n:, video_start:video_start + n] += tr[p + "attention.gate2"].view(heads, 1, 1)
        out = scores.softmax(-1) @ v
        if i >= first_adapter:
            s = i - first_adapter
            prompt = tr["adapter_query.weight"][s * adapter_len:(s + 1) * adapter_len]
            pk = (prompt @ meta[p + "attention.wk.weight"].T).view(-1, kv_heads, hd).repeat_interleave(rep, 1).transpose(0, 1)
            pv = (prompt @ meta[p + "attention.wv.weight"].T).view(-1, kv_heads, hd).repeat_interleave(rep, 1).transpose(0, 1)
            gate = torch.tanh(tr[p + "attention.gate1"]).view(heads, 1, 1)
            out = out + gate * ((q @ pk.transpose(-1, -2) / math.sqrt(hd)).softmax(-1) @ pv)
        h = h + out.transpose(0, 1).reshape(seqlen, d) @ meta[p + "attention.wo.weight"].T
        x = _rms_norm(h, meta[p + "ffn_norm.weight"], eps)
        ffn = F.silu(x @ meta[p + "feed_forward.w1.weight"].T) * (x @ meta[p + "feed_forward.w3.weight"].T)
        h = h + ffn @ meta[p + "feed_forward.w2.weight"].T
    return _rms_norm(h, meta["norm.weight"], eps) @ meta["output.weight"].T


def release_scores(release: ReleaseFiles, sp, features, question: str, options: list[str], use_memory: bool):
    """The release protocol on the Meta-format release: one full forward per option, mean NLL from the
    first differing token through </s>. Video preparation and prompts come from tests/helpers/reference_topa.py."""
    from tests.helpers.reference_topa import reference_mc_sequences, reference_video

    max_feats = release.args.max_feats
    video = reference_video(features, max_feats, release.memory_tensor if use_memory else None)
    seqs, video_start = reference_mc_sequences(sp, question, options, max_feats)
    first = next(i for i, col in enumerate(zip(*seqs)) if len(set(col)) > 1)
    scores = []
    for seq in seqs:
        logp = torch.log_softmax(meta_logits(release, seq, video, video_start), dim=-1)
        scores.append(torch.stack([-logp[t - 1, seq[t]] for t in range(first, len(seq))]).mean())
    return torch.stack(scores)
