"""The TOPA attention, plugged into any supported decoder through transformers' AttentionInterface.

In an adapter layer (slot ``s``) each head computes::

    softmax(cap(q K^T * scale) + mask + video_bias) V  +  tanh(gate1[s, h]) * softmax(cap(q Kp^T * scale)) Vp

where ``Kp``/``Vp`` are what the layer's own frozen key/value map makes of the slot's learned
prompt vectors, without rotary embedding (``topa_plugin.decoders``), ``cap`` is the family's
attention logit soft-capping (identity unless the LLM sets it, as Gemma2 does), and
``video_bias`` adds ``gate2[s, h]`` to the scores from every query positioned after the video
span to the keys inside it, where the mask is added. Without soft-capping both softmaxes run in
SDPA kernels; layers below the adapter slots run the stock path unchanged.

Keys are placed by absolute position: a sliding-window cache hands over only the last keys, so
key ``j`` of ``kv_len`` sits at ``query_start + q_len - kv_len + j``, not at ``j``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

# No "sdpa" in the name: transformers then checks the LLM's SDPA support, which Gemma2 lacks.
TOPA_ATTENTION = "topa_attention"
# cuDNN attention re-plans for every new sequence length (about a second on an H100, then
# milliseconds of CPU per call), and prompt lengths vary per question: use the other kernels.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class TopaAttentionState:
    """Per-forward adapter inputs, passed to the LLM's forward as the ``topa_state`` keyword.

    All in the LLM's compute dtype, prepared once per forward: ``prompts`` [adapter_layer,
    adapter_len, d], ``prompt_gate`` = tanh(gate1) and ``video_gate`` = gate2, both
    [adapter_layer, n_heads]; ``video_start`` [B] absolute positions of the first video slot
    (None: no video bias); ``first_layer``: the LLM layer index of adapter slot 0;
    ``query_start``: absolute position of this forward's first query (the cache length before
    it); ``key_values``: the family's prompt key/value map (``decoders.DecoderFamily``).
    """

    first_layer: int
    prompts: torch.Tensor
    prompt_gate: torch.Tensor
    video_gate: torch.Tensor
    video_start: torch.Tensor | None
    max_feats: int
    key_values: Callable
    query_start: int = 0
    # Per-slot prompt keys/values [1, H, P, hd] kept across the forwards of one inference call
    # (``TopaAdapter.reuse_prompt_projections``). None: project in every layer call, which
    # activation checkpointing needs (its recompute must redo what the forward did).
    prompt_kv: dict | None = field(default=None, repr=False)
    # The video-bias pattern is the same in every layer of one forward: build it once.
    _pattern: dict = field(default_factory=dict, repr=False)

    def video_pattern(self, q_len: int, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, q_len, kv_len]: 1 where a post-video query meets a video key, else 0.

        Queries sit at ``query_start + 0..q_len-1``; the ``kv_len`` keys are the positions that
        end with the last query (all of them, or a sliding window's last ones).
        """
        key = (q_len, kv_len, dtype)
        if key not in self._pattern:
            query_end = self.query_start + q_len
            if kv_len > query_end:
                raise ValueError(
                    f"the attention got {kv_len} keys for queries ending at position {query_end}: TOPA places the "
                    "video bias by position and needs keys that end at the last query (a DynamicCache)"
                )
            device = self.video_start.device
            start = self.video_start[:, None]
            end = start + self.max_feats
            q_pos = torch.arange(self.query_start, query_end, device=device)[None, :]
            k_pos = torch.arange(query_end - kv_len, query_end, device=device)[None, :]
            after_video = q_pos >= end  # [B, q]
            in_video = (k_pos >= start) & (k_pos < end)  # [B, kv]
            self._pattern[key] = (after_video[:, None, :, None] & in_video[:, None, None, :]).to(dtype)
        return self._pattern[key]


def video_bias(state: TopaAttentionState, slot: int, q_len: int, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive scores [B, H, q_len, kv_len]: gate2 from post-video queries to video keys, else 0."""
    return state.video_pattern(q_len, kv_len, dtype) * state.video_gate[slot][None, :, None, None]


def causal_mask(q_len: int, kv_len: int, device) -> torch.Tensor:
    """[q_len, kv_len] boolean: the queries are the last ``q_len`` of the ``kv_len`` positions."""
    rows = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    return torch.arange(kv_len, device=device)[None, :] <= rows


def capped_attention(module, query, key, value, mask, scaling, softcap, bias=None, dropout=0.0) -> torch.Tensor:
    """softmax(cap(q K^T * scale) + mask + bias) V as [B, H, q, hd]: soft-capping has no SDPA kernel.

    ``mask``: boolean (True = visible), additive float, or None (everything visible).
    """
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    value = repeat_kv(value, query.shape[1] // value.shape[1])
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    scores = softcap * torch.tanh(scores / softcap)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # as eager: no NaN rows
    elif mask is not None:
        scores = scores + mask
    if bias is not None:
        scores = scores + bias
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value)


def prompt_attention(module, query, state: TopaAttentionState, slot: int, scaling, softcap) -> torch.Tensor:
    """tanh(gate1)-scaled attention of ``query`` [B, H, q, hd] to the slot's prompts, as [B, q, H, hd]."""
    kv = None if state.prompt_kv is None else state.prompt_kv.get(slot)
    if kv is None:
        kv = state.key_values(module, state.prompts[slot])
        if state.prompt_kv is not None:
            state.prompt_kv[slot] = kv
    keys, values = (repeat_kv(t, query.shape[1] // t.shape[1]).expand(query.shape[0], -1, -1, -1) for t in kv)
    if softcap is None:
        out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, scale=scaling)
    else:
        out = capped_attention(module, query, keys, values, None, scaling, softcap)
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
    softcap: float | None = None,
    **kwargs,
):
    """AttentionInterface entry: stock attention, plus prompts and video bias in adapter layers.

    The kernel choice is made here, per call, so that activation checkpointing's recompute
    (which runs in backward, outside any caller's context) uses the same kernels as the forward.
    """
    slot = -1 if topa_state is None else module.layer_idx - topa_state.first_layer
    scaling = module.head_dim**-0.5 if scaling is None else scaling
    bias = None
    if slot >= 0 and topa_state.video_start is not None:
        bias = video_bias(topa_state, slot, query.shape[2], key.shape[2], query.dtype)
    if softcap is not None:
        if attention_mask is None:  # plain causal prefill: SDPA would have used is_causal
            attention_mask = causal_mask(query.shape[2], key.shape[2], query.device)
        out = capped_attention(module, query, key, value, attention_mask, scaling, softcap, bias, dropout).transpose(1, 2)
    else:
        with sdpa_kernel(SDPA_BACKENDS):
            out, _ = sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, position_bias=bias, **kwargs
            )
    if slot < 0:
        return out, None
    with sdpa_kernel(SDPA_BACKENDS):
        return out + prompt_attention(module, query, topa_state, slot, scaling, softcap), None


AttentionInterface.register(TOPA_ATTENTION, topa_attention_forward)
# The masks are the ones SDPA gets (None for plain causal prefill, boolean otherwise).
AttentionMaskInterface.register(TOPA_ATTENTION, sdpa_mask)
