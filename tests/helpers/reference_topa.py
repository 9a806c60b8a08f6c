"""An independent plain-torch TOPA (docs/method.md sections 2-4, 6), used only as a test oracle.

Written from the formulas, not from topa_plugin: its own RMSNorm, rotary embedding, per-head
attention loops with explicit masks, the gated prompt softmax and the video bias, run in
float64 over the weights of a Hugging Face Llama; prompts come straight from sentencepiece.
Scoring follows the release protocol: one full forward per option.
"""

from __future__ import annotations

import math

import torch

MC_INSTRUCTION = "Instruction: Choose the correct answer based on the video and question.\nVideo:"


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of [L, hd] rows at positions 0..L-1, pairing dims (i, i + hd/2) (HF layout)."""
    length, dim = x.shape
    half = dim // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / dim)
    angle = torch.arange(length, dtype=torch.float64)[:, None] * freq[None, :]
    a, b = x[:, :half], x[:, half:]
    return torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], dim=-1)


def softmax(scores: torch.Tensor) -> torch.Tensor:
    scores = scores - scores.max(-1, keepdim=True).values
    e = scores.exp()
    return e / e.sum(-1, keepdim=True)


def reference_logits(llm, adapter: dict, n_adapter_layers: int, input_ids: list[int], video=None, video_start=None):
    """Logits [L, V] (float64) of one sequence. ``adapter`` holds the contract's trainable tensors
    (visual_proj.weight, temporal_emb.weight, adapter_query.weight, gate1, gate2); ``video`` is
    the prepared [max_feats, F] features or None."""
    cfg = llm.config
    w = {k: _f64(v) for k, v in llm.state_dict().items()}
    ad = {k: _f64(v) for k, v in adapter.items()}
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    hd = cfg.hidden_size // n_heads
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or cfg.rope_theta
    eps = cfg.rms_norm_eps
    adapter_len = ad["adapter_query.weight"].shape[0] // n_adapter_layers
    length = len(input_ids)

    h = w["model.embed_tokens.weight"][torch.tensor(input_ids)].clone()
    max_feats = 0
    if video is not None:
        max_feats = ad["temporal_emb.weight"].shape[0]
        h[video_start : video_start + max_feats] = _f64(video) @ ad["visual_proj.weight"].T + ad["temporal_emb.weight"]

    causal = torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)
    for layer in range(n_layers):
        p = f"model.layers.{layer}."
        slot = layer - (n_layers - n_adapter_layers)
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = x @ w[p + "self_attn.q_proj.weight"].T
        k = x @ w[p + "self_attn.k_proj.weight"].T
        v = x @ w[p + "self_attn.v_proj.weight"].T
        if slot >= 0:
            prompts = ad["adapter_query.weight"][slot * adapter_len : (slot + 1) * adapter_len]
            kp = prompts @ w[p + "self_attn.k_proj.weight"].T
            vp = prompts @ w[p + "self_attn.v_proj.weight"].T
        heads = []
        for head in range(n_heads):
            kv = head // (n_heads // n_kv)
            qh = rotate(q[:, head * hd : (head + 1) * hd], theta)
            kh = rotate(k[:, kv * hd : (kv + 1) * hd], theta)
            vh = v[:, kv * hd : (kv + 1) * hd]
            scores = qh @ kh.T / math.sqrt(hd) + causal
            if slot >= 0 and video is not None:
                scores[video_start + max_feats :, video_start : video_start + max_feats] += ad["gate2"][slot, head]
            out = softmax(scores) @ vh
            if slot >= 0:
                kph, vph = kp[:, kv * hd : (kv + 1) * hd], vp[:, kv * hd : (kv + 1) * hd]
                out = out + torch.tanh(ad["gate1"][slot, head]) * softmax(qh @ kph.T / math.sqrt(hd)) @ vph
            heads.append(out)
        h = h + torch.cat(heads, dim=-1) @ w[p + "self_attn.o_proj.weight"].T
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate = x @ w[p + "mlp.gate_proj.weight"].T
        h = h + (gate * torch.sigmoid(gate) * (x @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    return rms_norm(h, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


def reference_video(features: torch.Tensor, max_feats: int, memory: torch.Tensor | None, temperature: float = 100.0):
    """Normalise, take rows (j*T)//max_feats or zero-pad, then (optionally) project onto memory."""
    x = _f64(features)
    x = x / x.norm(dim=-1, keepdim=True)
    n = x.shape[0]
    if n >= max_feats:
        x = x[[(j * n) // max_feats for j in range(max_feats)]]
    else:
        x = torch.cat([x, torch.zeros(max_feats - n, x.shape[1], dtype=x.dtype)])
    if memory is not None:
        m = _f64(memory)
        x = softmax(temperature * x @ m.T) @ m
        x = x / x.norm(dim=-1, keepdim=True)
    return x


def reference_mc_sequences(sp, question: str, options: list[str], max_feats: int):
    """The release's multiple-choice token sequences (one per option) and the video start."""
    q = question.capitalize().strip()
    if q[-1] not in "?.":
        q += "?"
    body = f"Question: {q}\nChoices: \n" + "".join(f"({'ABCDE'[i]}) {o}\n" for i, o in enumerate(options))
    head = [sp.bos_id()] + sp.encode(MC_INSTRUCTION)
    newline = sp.piece_to_id("<0x0A>")
    placeholders = [sp.unk_id()] * max_feats
    seqs = [
        head + placeholders + [newline] + sp.encode(body + f"Answer: The correct choice is ({'ABCDE'[i]})") + [sp.eos_id()]
        for i in range(len(options))
    ]
    return seqs, len(head)


def reference_scores(llm, adapter, n_adapter_layers, sp, features, question, options, memory=None):
    """Release protocol: a full forward per option; mean NLL from the first differing token through </s>."""
    max_feats = adapter["temporal_emb.weight"].shape[0]
    video = reference_video(features, max_feats, memory)
    seqs, video_start = reference_mc_sequences(sp, question, options, max_feats)
    first = next(i for i, col in enumerate(zip(*seqs)) if len(set(col)) > 1)
    scores = []
    for seq in seqs:
        logits = reference_logits(llm, adapter, n_adapter_layers, seq, video, video_start)
        logp = torch.log_softmax(logits, dim=-1)
        nll = [-logp[t - 1, seq[t]] for t in range(first, len(seq))]
        scores.append(torch.stack(nll).mean())
    return torch.stack(scores)
