"""An independent plain-torch TOPA (docs/method.md sections 2-4, 6), used only as a test oracle.

Written from the formulas, not from topa_plugin: the forward is the float64 per-family oracle of
reference_decoders.py (its own norms, rotary embedding, per-head attention loops with explicit
masks, the gated prompt softmax and the video bias); prompts come straight from sentencepiece.
Scoring follows the release protocol: one full forward per option.
"""

from __future__ import annotations

import torch

from tests.helpers.reference_decoders import Oracle, f64, reference_choice_scores, softmax

MC_INSTRUCTION = "Instruction: Choose the correct answer based on the video and question.\nVideo:"


def reference_logits(llm, adapter: dict, n_adapter_layers: int, input_ids: list[int], video=None, video_start=None):
    """Logits [L, V] (float64) of one sequence. ``adapter`` holds the contract's trainable tensors
    (visual_proj.weight, temporal_emb.weight, adapter_query.weight, gate1, gate2); ``video`` is
    the prepared [max_feats, F] features or None. Any family of tests/helpers/reference_decoders.py."""
    return Oracle(llm, adapter, n_adapter_layers).logits(input_ids, video, video_start)


def reference_video(features: torch.Tensor, max_feats: int, memory: torch.Tensor | None, temperature: float = 100.0):
    """Normalise, take rows (j*T)//max_feats or zero-pad, then (optionally) project onto memory."""
    x = f64(features)
    x = x / x.norm(dim=-1, keepdim=True)
    n = x.shape[0]
    if n >= max_feats:
        x = x[[(j * n) // max_feats for j in range(max_feats)]]
    else:
        x = torch.cat([x, torch.zeros(max_feats - n, x.shape[1], dtype=x.dtype)])
    if memory is not None:
        m = f64(memory)
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
    return reference_choice_scores(Oracle(llm, adapter, n_adapter_layers), seqs, video, video_start)
