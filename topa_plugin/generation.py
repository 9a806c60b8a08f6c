"""Zero-shot scoring and free generation for TOPA: ``score_choices`` and ``generate_answer``.

A mixin of ``TopaForCausalLM``: scoring shares each question's prefix through the KV cache and
scores all choices from it in one batched forward; decoding is greedy with the KV cache.
"""

from __future__ import annotations

import torch

from topa_plugin.processing import TopaProcessor


class TopaGenerationMixin:
    """Inference entry points of ``TopaForCausalLM`` (they need its ``processor``)."""

    def _require_processor(self) -> TopaProcessor:
        if self.processor is None:
            raise ValueError("this TopaForCausalLM has no processor; set model.processor = TopaProcessor(tokenizer)")
        return self.processor

    @torch.no_grad()
    def score_choices(self, video_features, question, choices, use_memory: bool = True) -> torch.Tensor:
        """Mean NLL per choice from the first token where the choices differ through </s> (argmin wins).

        Single question: features [T, F], str, list[str] -> [C]. Batch: lists of each (or a
        [B, T, F] tensor) -> [B, C]. Per question, the shared prefix runs once; all choices are
        then scored from its cache in one batched forward.
        """
        if isinstance(question, str):
            with self.adapter.reuse_prompt_projections():
                return self._score_one(video_features, question, choices, use_memory)
        if len(video_features) != len(question) or len(choices) != len(question):
            raise ValueError(
                f"batch sizes differ: {len(video_features)} videos, {len(question)} questions, {len(choices)} choice lists"
            )
        counts = {len(c) for c in choices}
        if len(counts) != 1:
            raise ValueError(f"every question needs the same number of choices for a [B, C] result, got {sorted(counts)}")
        with self.adapter.reuse_prompt_projections():
            return torch.stack([self._score_one(v, q, c, use_memory) for v, q, c in zip(video_features, question, choices)])

    def _score_one(self, features, question: str, choices: list[str], use_memory: bool) -> torch.Tensor:
        processor = self._require_processor()
        if len(choices) < 2:
            raise ValueError(f"score_choices needs at least 2 choices, got {len(choices)} for {question!r}")
        device = self.llm.device
        prompts = [processor.encode_multiple_choice(question, choices, answer=i) for i in range(len(choices))]
        sequences = [p.input_ids for p in prompts]
        differ = _first_difference(sequences)
        video_start = prompts[0].video_start
        if differ < video_start + self.config.max_feats:
            raise ValueError("choices differ inside the video span; cannot share a prefix")
        video = self.prepare_video(features, use_memory)[None]
        n = len(choices)
        # The shared prefix's last logits predict every choice's first differing token.
        prefix = self(torch.tensor([sequences[0][:differ]], device=device), video, video_start, use_cache=True, logits_to_keep=1)
        first = torch.tensor([seq[differ] for seq in sequences], device=device)
        total = -torch.log_softmax(prefix.logits[0, -1].float(), dim=-1)[first]
        count = torch.ones(n, device=device)
        # Each choice's remaining targets are predicted from its tokens differ..end-1 (the
        # final </s> is never an input). Right padding needs no attention mask: causal
        # attention never looks ahead to it; padded targets are masked out of the mean.
        inputs = [seq[differ:-1] for seq in sequences]
        width = max(map(len, inputs))
        if width:
            # Built on the CPU and moved once: one transfer instead of one per choice.
            tokens = torch.full((n, width), processor.eos_id, dtype=torch.long)
            targets = torch.full((n, width), processor.eos_id, dtype=torch.long)
            valid = torch.zeros(n, width, dtype=torch.bool)
            for i, (seq, row) in enumerate(zip(sequences, inputs)):
                tokens[i, : len(row)] = torch.tensor(row)
                targets[i, : len(row)] = torch.tensor(seq[differ + 1 :])
                valid[i, : len(row)] = True
            tokens, targets, valid = tokens.to(device), targets.to(device), valid.to(device)
            cache = prefix.cache
            cache.batch_repeat_interleave(n)
            logits = self(tokens, video_start=video_start, past_key_values=cache).logits.float()
            nll = -torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
            total = total + (nll * valid).sum(-1)
            count = count + valid.sum(-1)
        return (total / count).cpu()

    # ----- free generation -----
    @torch.no_grad()
    def generate_answer(
        self,
        video_features,
        prompt_text: str,
        max_new_tokens: int = 32,
        until=(),
        template: str = "open_ended",
        use_memory: bool = True,
    ) -> str:
        """Greedy decoding with the KV cache, from the open-ended ("Question: {prompt_text}\\nAnswer:")
        or summary ("Description:") template. ``prompt_text`` is used verbatim (callers may apply
        ``processor.normalize_question``). Stops at </s>, ``max_new_tokens`` or any ``until`` string.
        """
        processor = self._require_processor()
        if template == "open_ended":
            prompt = processor.encode_open_ended(prompt_text, None)
        elif template == "summary":
            prompt = processor.encode_summary(None)
        else:
            raise ValueError(f"unknown template {template!r} (use 'open_ended' or 'summary')")
        with self.adapter.reuse_prompt_projections():
            generated = self._greedy(prompt, self.prepare_video(video_features, use_memory)[None], max_new_tokens, until)
        text = processor.decode(generated)
        for stop in until:
            text = text.split(stop)[0]
        return text.strip()

    def _greedy(self, prompt, video: torch.Tensor, max_new_tokens: int, until) -> list[int]:
        """Token ids after ``prompt``: greedy, KV-cached, until </s>, a stop string or the limit."""
        processor = self._require_processor()
        device = self.llm.device
        out = self(torch.tensor([prompt.input_ids], device=device), video, prompt.video_start, use_cache=True, logits_to_keep=1)
        generated: list[int] = []
        for _ in range(max_new_tokens):
            token = int(out.logits[0, -1].argmax())
            if token == processor.eos_id:
                break
            generated.append(token)
            if until and any(stop in processor.decode(generated) for stop in until):
                break
            step = torch.tensor([[token]], device=device)
            out = self(step, video_start=prompt.video_start, past_key_values=out.cache, use_cache=True)
        return generated


def _first_difference(sequences: list[list[int]]) -> int:
    """Index of the first position where the token sequences are not all equal."""
    for index, column in enumerate(zip(*sequences)):
        if len(set(column)) > 1:
            return index
    raise ValueError("the choices tokenise to sequences that do not differ")
