"""The TOPA attention, plugged into any Llama-family model through transformers' AttentionInterface.

In an adapter layer (slot ``s``) each head computes::

    softmax(q K^T * scale + causal + video_bias) V  +  tanh(gate1[s, h]) * softmax(q Kp^T * scale) Vp

where ``Kp``/``Vp`` are the layer's own frozen k/v projections of the slot's learned prompt
vectors (no rotary embedding), and ``video_bias`` adds ``gate2[s, h]`` to the scores from every
query positioned after the video span to the keys inside it. Both softmaxes run in SDPA kernels;
layers below the adapter slots run the stock SDPA path unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

TOPA_ATTENTION = "topa_sdpa"
# cuDNN attention re-plans for every new sequence length (about a second on an H100, then
# milliseconds of CPU per call), and prompt lengths vary per question: use the other kernels.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class TopaAttentionState:
    """Per-forward adapter inputs, passed to the LLM's forward as the ``topa_state`` keyword.

    All in the LLM's compute dtype, prepared once per forward: ``prompts`` [adapter_layer,
    adapter_len, d], ``prompt_gate`` = tanh(gate1) and ``video_gate`` = gate2, both
    [adapter_layer, n_heads]; ``video_start`` [B] absolute positions of the first video slot
    (None: no video bias); ``first_layer``: the LLM layer index of adapter slot 0.
    """

    first_layer: int
    prompts: torch.Tensor
    prompt_gate: torch.Tensor
    video_gate: torch.Tensor
    video_start: torch.Tensor | None
    max_feats: int
    # Per-slot prompt keys/values [1, H, P, hd] kept across the forwards of one inference call
    # (``TopaAdapter.reuse_prompt_projections``). None: project in every layer call, which
    # activation checkpointing needs (its recompute must redo what the forward did).
    prompt_kv: dict | None = field(default=None, repr=False)
    # The video-bias pattern is the same in every layer of one forward: build it once.
    _pattern: dict = field(default_factory=dict, repr=False)

    def video_pattern(self, q_len: int, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, q_len, kv_len]: 1 where a post-video query meets a video key, else 0.

        Queries are the last ``q_len`` of ``kv_len`` positions (true with or without a KV cache).
        """
        key = (q_len, kv_len, dtype)
        if key not in self._pattern:
            device = self.video_start.device
            start = self.video_start[:, None]
            end = start + self.max_feats
            q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[None, :]
            k_pos = torch.arange(kv_len, device=device)[None, :]
            after_video = q_pos >= end  # [B, q]
            in_video = (k_pos >= start) & (k_pos < end)  # [B, kv]
            self._pattern[key] = (after_video[:, None, :, None] & in_video[:, None, None, :]).to(dtype)
        return self._pattern[key]


def video_bias(state: TopaAttentionState, slot: int, q_len: int, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive scores [B, H, q_len, kv_len]: gate2 from post-video queries to video keys, else 0."""
    return state.video_pattern(q_len, kv_len, dtype) * state.video_gate[slot][None, :, None, None]


def prompt_attention(module, query: torch.Tensor, state: TopaAttentionState, slot: int, scaling: float | None):
    """tanh(gate1)-scaled attention of ``query`` [B, H, q, hd] to the slot's prompts, as [B, q, H, hd]."""
    batch, n_heads, _, head_dim = query.shape
    prompts = state.prompts[slot]

    def heads(proj):
        states = proj(prompts).view(1, prompts.shape[0], -1, head_dim).transpose(1, 2)
        return repeat_kv(states, n_heads // states.shape[1])

    kv = None if state.prompt_kv is None else state.prompt_kv.get(slot)
    if kv is None:
        kv = heads(module.k_proj), heads(module.v_proj)
        if state.prompt_kv is not None:
            state.prompt_kv[slot] = kv
    keys, values = (t.expand(batch, -1, -1, -1) for t in kv)
    out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, scale=scaling)
    return (state.prompt_gate[slot][None, :, None, None] * out).transpose(1, 2)


def topa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    topa_state: TopaAttentionState | None = None,
    **kwargs,
):
    """AttentionInterface entry: stock SDPA, plus prompts and video bias in adapter layers.

    The kernel choice is made here, per call, so that activation checkpointing's recompute
    (which runs in backward, outside any caller's context) uses the same kernels as the forward.
    """
    slot = -1 if topa_state is None else module.layer_idx - topa_state.first_layer
    with sdpa_kernel(SDPA_BACKENDS):
        if slot < 0:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        bias = None
        if topa_state.video_start is not None:
            bias = video_bias(topa_state, slot, query.shape[2], key.shape[2], query.dtype)
        out, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, position_bias=bias, **kwargs
        )
        return out + prompt_attention(module, query, topa_state, slot, scaling), None


AttentionInterface.register(TOPA_ATTENTION, topa_attention_forward)
# The masks are the ones SDPA gets (None for plain causal prefill, boolean otherwise).
AttentionMaskInterface.register(TOPA_ATTENTION, sdpa_mask)
