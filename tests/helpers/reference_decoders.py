"""An independent float64 TOPA over the decoder families TOPA supports, used only as a test oracle.

Written from each architecture's published description, not from topa_plugin or transformers'
modeling code: per-family norm placement, RMSNorm flavour, MLP, fused projections, q/k norms,
rotary frequencies, sliding windows and attention soft-capping, with per-head loops and
explicit masks. The TOPA parts follow docs/method.md section 3: each adapter layer's prompts
take the layer's own key/value map (k/v projections, then the family's key norm) with no rotary
embedding; gate2 is added to the post-video-query x video-key scores after any soft-capping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Family:
    """How one decoder family computes a layer (the facts the oracle needs)."""

    layout: str = "pre"  # "pre": x + f(norm(x)); "sandwich": x + norm(f(norm(x))); "post": x + norm(f(x))
    unit_offset_norm: bool = False  # RMSNorm weight applied as (1 + w) (Gemma)
    mlp_act: str = "silu"  # "silu" or "gelu_tanh"
    fused: bool = False  # Phi3: qkv_proj and gate_up_proj
    qk_norm: str | None = None  # "head": RMSNorm over head_dim; "full": over the whole projection
    embed_scale: bool = False  # Gemma: embeddings times sqrt(hidden_size)
    all_sliding: bool = False  # Mistral/Phi3: one sliding window for every layer when set


FAMILIES = {
    "llama": Family(),
    "mistral": Family(all_sliding=True),
    "qwen2": Family(),
    "qwen3": Family(qk_norm="head"),
    "gemma": Family(unit_offset_norm=True, mlp_act="gelu_tanh", embed_scale=True),
    "gemma2": Family(layout="sandwich", unit_offset_norm=True, mlp_act="gelu_tanh", embed_scale=True),
    "gemma3_text": Family(layout="sandwich", unit_offset_norm=True, mlp_act="gelu_tanh", qk_norm="head", embed_scale=True),
    "phi3": Family(fused=True, all_sliding=True),
    "olmo2": Family(layout="post", qk_norm="full"),
}


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def softmax(scores: torch.Tensor) -> torch.Tensor:
    scores = scores - scores.max(-1, keepdim=True).values
    e = scores.exp()
    return e / e.sum(-1, keepdim=True)


def act(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "silu":
        return x / (1 + torch.exp(-x))
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def rope_frequencies(params: dict, head_dim: int) -> torch.Tensor:
    """Inverse frequencies [hd/2]; Llama-3.1's "llama3" scaling stretches the low frequencies."""
    freq = params["rope_theta"] ** (-torch.arange(head_dim // 2, dtype=torch.float64) * 2 / head_dim)
    if params.get("rope_type", "default") == "default":
        return freq
    if params["rope_type"] != "llama3":
        raise NotImplementedError(f"oracle has no rope type {params['rope_type']!r}")
    wavelength = 2 * math.pi / freq
    old = params["original_max_position_embeddings"]
    low, high = old / params["low_freq_factor"], old / params["high_freq_factor"]
    smooth = (old / wavelength - params["low_freq_factor"]) / (params["high_freq_factor"] - params["low_freq_factor"])
    mid = (1 - smooth) * freq / params["factor"] + smooth * freq
    return torch.where(wavelength > low, freq / params["factor"], torch.where(wavelength < high, freq, mid))


def rotate(x: torch.Tensor, freq: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of [L, hd] rows at positions 0..L-1, pairing dims (i, i + hd/2)."""
    half = x.shape[1] // 2
    angle = torch.arange(x.shape[0], dtype=torch.float64)[:, None] * freq[None, :]
    a, b = x[:, :half], x[:, half:]
    return torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], dim=-1)


class Oracle:
    """Float64 copy of one Hugging Face decoder's weights plus a TOPA adapter."""

    def __init__(self, llm, adapter: dict, n_adapter_layers: int):
        self.cfg = cfg = llm.config
        self.family = FAMILIES[cfg.model_type]
        self.w = {k: f64(v) for k, v in llm.state_dict().items()}
        self.ad = {k: f64(v) for k, v in adapter.items()}
        self.n_layers = cfg.num_hidden_layers
        self.first_slot_layer = self.n_layers - n_adapter_layers
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.adapter_len = self.ad["adapter_query.weight"].shape[0] // n_adapter_layers
        pre_scalar = getattr(cfg, "query_pre_attn_scalar", None)
        self.scale = (pre_scalar if cfg.model_type.startswith("gemma") and pre_scalar else self.hd) ** -0.5
        self.softcap = getattr(cfg, "attn_logit_softcapping", None)

    def norm(self, x, name):
        weight = self.w[name]
        weight = 1 + weight if self.family.unit_offset_norm else weight
        return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)

    def linear(self, x, name):
        out = x @ self.w[name + ".weight"].T
        return out + self.w[name + ".bias"] if name + ".bias" in self.w else out

    def layer_type(self, layer: int) -> str:
        types = getattr(self.cfg, "layer_types", None)
        if self.family.all_sliding or not types:
            return "sliding_attention" if getattr(self.cfg, "sliding_window", None) else "full_attention"
        return types[layer]

    def rope(self, layer: int) -> torch.Tensor:
        params = self.cfg.rope_parameters
        if "rope_theta" not in params:  # per layer type (Gemma3)
            params = params[self.layer_type(layer)]
        return rope_frequencies(params, self.hd)

    def key_value_map(self, p: str, x: torch.Tensor):
        """The layer's frozen key/value map (no position): projections, then the family's key norm."""
        kv_size = self.n_kv * self.hd
        if self.family.fused:
            qkv = self.linear(x, p + "qkv_proj")
            q_size = self.n_heads * self.hd
            q, k, v = qkv[:, :q_size], qkv[:, q_size : q_size + kv_size], qkv[:, q_size + kv_size :]
        else:
            q, k, v = (self.linear(x, p + name) for name in ("q_proj", "k_proj", "v_proj"))
        if self.family.qk_norm == "full":
            q, k = self.norm(q, p + "q_norm.weight"), self.norm(k, p + "k_norm.weight")
        elif self.family.qk_norm == "head":
            q = self.norm(q.view(len(x), -1, self.hd), p + "q_norm.weight").reshape(len(x), -1)
            k = self.norm(k.view(len(x), -1, self.hd), p + "k_norm.weight").reshape(len(x), -1)
        return q, k, v

    def capped(self, scores):
        return scores if not self.softcap else self.softcap * torch.tanh(scores / self.softcap)

    def attention(self, layer: int, x: torch.Tensor, video_span) -> torch.Tensor:
        p = f"model.layers.{layer}.self_attn."
        length = len(x)
        slot = layer - self.first_slot_layer
        q, k, v = self.key_value_map(p, x)
        if slot >= 0:
            prompts = self.ad["adapter_query.weight"][slot * self.adapter_len : (slot + 1) * self.adapter_len]
            _, kp, vp = self.key_value_map(p, prompts)
        i = torch.arange(length)[:, None]
        j = torch.arange(length)[None, :]
        visible = j <= i
        if self.layer_type(layer) == "sliding_attention":
            visible &= i - j < self.cfg.sliding_window
        freq = self.rope(layer)
        heads = []
        for head in range(self.n_heads):
            g = head // (self.n_heads // self.n_kv)
            cols = slice(g * self.hd, (g + 1) * self.hd)
            qh = rotate(q[:, head * self.hd : (head + 1) * self.hd], freq)
            scores = self.capped(qh @ rotate(k[:, cols], freq).T * self.scale)
            scores = scores.masked_fill(~visible, float("-inf"))
            if slot >= 0 and video_span is not None:
                start, end = video_span
                scores[end:, start:end] += self.ad["gate2"][slot, head]
            out = softmax(scores) @ v[:, cols]
            if slot >= 0:
                prompt_probs = softmax(self.capped(qh @ kp[:, cols].T * self.scale))
                out = out + torch.tanh(self.ad["gate1"][slot, head]) * prompt_probs @ vp[:, cols]
            heads.append(out)
        return self.linear(torch.cat(heads, dim=-1), p + "o_proj")

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        p = f"model.layers.{layer}.mlp."
        if self.family.fused:
            gate, up = self.linear(x, p + "gate_up_proj").chunk(2, dim=-1)
        else:
            gate, up = self.linear(x, p + "gate_proj"), self.linear(x, p + "up_proj")
        return self.linear(act(gate, self.family.mlp_act) * up, p + "down_proj")

    def block(self, layer: int, h: torch.Tensor, video_span) -> torch.Tensor:
        p = f"model.layers.{layer}."
        layout = self.family.layout
        if layout == "post":
            h = h + self.norm(self.attention(layer, h, video_span), p + "post_attention_layernorm.weight")
            return h + self.norm(self.mlp(layer, h), p + "post_feedforward_layernorm.weight")
        a = self.attention(layer, self.norm(h, p + "input_layernorm.weight"), video_span)
        if layout == "pre":
            h = h + a
            return h + self.mlp(layer, self.norm(h, p + "post_attention_layernorm.weight"))
        h = h + self.norm(a, p + "post_attention_layernorm.weight")
        m = self.mlp(layer, self.norm(h, p + "pre_feedforward_layernorm.weight"))
        return h + self.norm(m, p + "post_feedforward_layernorm.weight")

    def logits(self, input_ids: list[int], video=None, video_start=None) -> torch.Tensor:
        """Logits [L, V] of one sequence; ``video`` is the prepared [max_feats, F] features or None."""
        embed = self.w["model.embed_tokens.weight"]
        h = embed[torch.tensor(input_ids)].clone()
        if self.family.embed_scale:
            h = h * torch.tensor(self.cfg.hidden_size**0.5, dtype=torch.float32).double()
        span = None
        if video is not None:
            n = self.ad["temporal_emb.weight"].shape[0]
            span = (video_start, video_start + n)
            h[video_start : video_start + n] = f64(video) @ self.ad["visual_proj.weight"].T + self.ad["temporal_emb.weight"]
        for layer in range(self.n_layers):
            h = self.block(layer, h, span)
        out = self.norm(h, "model.norm.weight") @ self.w.get("lm_head.weight", embed).T
        cap = getattr(self.cfg, "final_logit_softcapping", None)
        return cap * torch.tanh(out / cap) if cap else out


def reference_choice_scores(oracle: Oracle, sequences: list[list[int]], video, video_start: int) -> torch.Tensor:
    """Release protocol with full forwards: mean NLL per option from the first differing token through the end."""
    first = next(i for i, column in enumerate(zip(*sequences)) if len(set(column)) > 1)
    scores = []
    for seq in sequences:
        logp = torch.log_softmax(oracle.logits(seq, video, video_start), dim=-1)
        scores.append(torch.stack([-logp[t - 1, seq[t]] for t in range(first, len(seq))]).mean())
    return torch.stack(scores)
