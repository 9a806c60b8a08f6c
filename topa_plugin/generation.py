"""Zero-shot scoring and free generation for TOPA: ``score_choices`` and ``generate_answer``.

A mixin of ``TopaForCausalLM``. Both take one question or a batch of them; a batch runs as one
forward over the questions' prompts, right-padded to the longest (each row has its own video),
then every later forward continues all rows from the KV cache at their own positions. Scoring
runs the B questions' shared prefixes once, then all B x C choices in one forward; decoding is
greedy with the KV cache.
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
        [B, T, F] tensor) -> [B, C], scored together: one forward for the B shared prefixes,
        one for the B x C choice continuations.

        Args:
            video_features: raw per-frame CLIP features [T, F] (any T), or a list / [B, T, F] batch;
                they are normalised, sampled to ``max_feats`` and projected here.
            question: the question text (the release's normalisation is applied), or a list.
            choices: the option texts (at least 2; the same count per question), or a list of lists.
            use_memory: project the frames onto ``model.memory`` when one is loaded (zero-shot).

        Returns:
            CPU float tensor of mean token NLLs, [C] or [B, C]; the argmin is the prediction.
        """
        if isinstance(question, str):
            return self.score_choices([video_features], [question], [choices], use_memory)[0]
        if len(video_features) != len(question) or len(choices) != len(question):
            raise ValueError(f"batch sizes differ: {len(video_features)} videos, {len(question)} questions, "
                             f"{len(choices)} choice lists")
        counts = {len(c) for c in choices}
        if len(counts) != 1:
            raise ValueError(f"every question needs the same number of choices for a [B, C] result, "
                             f"got {sorted(counts)}")
        with self.adapter.reuse_prompt_projections():
            return self._score_batch(list(video_features), list(question), [list(c) for c in choices], use_memory)

    def _score_batch(self, features: list, questions: list[str], choices: list[list[str]],
                     use_memory: bool) -> torch.Tensor:
        processor = self._require_processor()
        sequences, prefixes = [], []
        for question, options in zip(questions, choices):
            if len(options) < 2:
                raise ValueError(f"score_choices needs at least 2 choices, got {len(options)} for {question!r}")
            prompts = [processor.encode_multiple_choice(question, options, answer=i) for i in range(len(options))]
            rows = [p.input_ids for p in prompts]
            differ = _first_difference(rows)
            if differ < prompts[0].video_start + self.config.max_feats:
                raise ValueError("choices differ inside the video span; cannot share a prefix")
            sequences.append(rows)
            prefixes.append((rows[0][:differ], prompts[0].video_start))
        n = len(choices[0])
        # The shared prefix's last logits predict every choice's first differing token.
        first_logits, cache, lengths, starts = self._prefill(prefixes, features, use_memory)
        first = torch.tensor([[seq[len(p)] for seq in rows] for rows, (p, _) in zip(sequences, prefixes)])
        total = -torch.log_softmax(first_logits.float(), dim=-1).gather(-1, first.to(first_logits.device))
        count = torch.ones_like(total)
        # Each choice's remaining targets are predicted from its tokens differ..end-1 (the final
        # </s> is never an input); padded targets are masked out of the mean.
        inputs = [seq[len(p):-1] for rows, (p, _) in zip(sequences, prefixes) for seq in rows]
        width = max(map(len, inputs))
        if width:
            targets = [seq[len(p) + 1:] for rows, (p, _) in zip(sequences, prefixes) for seq in rows]
            tokens, valid = _right_pad(inputs, width, processor.eos_id)
            targets, _ = _right_pad(targets, width, processor.eos_id)
            cache.batch_repeat_interleave(n)
            out = self._continue(tokens, cache, lengths.repeat_interleave(n), starts.repeat_interleave(n))
            logits = out.logits.float()
            targets, valid = targets.to(logits.device), valid.to(logits.device)
            nll = -torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
            total = total + (nll * valid).sum(-1).view(-1, n)
            count = count + valid.sum(-1).view(-1, n)
        return (total / count).cpu()

    def _prefill(self, prompts: list[tuple[list[int], int]], features: list, use_memory: bool):
        """Run (ids, video_start) prompts right-padded as one batch with their videos.

        Returns (logits at each row's last prompt token [B, V], KV cache, prompt lengths [B],
        video starts [B]); padded cache slots are masked out by ``_continue``."""
        device = self.llm.device
        lengths = torch.tensor([len(ids) for ids, _ in prompts])
        ids, _ = _right_pad([ids for ids, _ in prompts], int(lengths.max()), self._require_processor().eos_id)
        starts = torch.tensor([start for _, start in prompts], device=device)
        video = torch.stack([self.prepare_video(f, use_memory) for f in features])
        # Keep the logits of only the positions that end some row (not B x L x vocab).
        ends = torch.unique(lengths - 1)
        out = self(ids.to(device), video, starts, use_cache=True, logits_to_keep=ends.to(device))
        rows = torch.arange(len(prompts), device=device)
        picked = out.logits[rows, torch.searchsorted(ends, lengths - 1).to(device)]
        return picked, out.cache, lengths.to(device), starts

    def _continue(self, tokens: torch.Tensor, cache, lengths: torch.Tensor, starts: torch.Tensor,
                  use_cache: bool = False):
        """Forward right-padded ``tokens`` [R, W] after each row's cached prompt of ``lengths``.

        New tokens take the cache slots after the longest prompt (and after earlier continued
        tokens) but each row's own positions; the mask hides the padding slots of shorter prompts."""
        device = self.llm.device
        past = cache.get_seq_length()
        continued = past - int(lengths.max())  # tokens appended by earlier calls
        slots = torch.arange(past + tokens.shape[1], device=device)[None, :]
        mask = (slots < lengths[:, None]) | (slots >= past - continued)
        positions = lengths[:, None] + continued + torch.arange(tokens.shape[1], device=device)[None, :]
        return self(tokens.to(device), video_start=starts, past_key_values=cache, use_cache=use_cache,
                    attention_mask=mask.long(), position_ids=positions)

    # ----- free generation -----
    @torch.no_grad()
    def generate_answer(
        self,
        video_features,
        prompt_text,
        max_new_tokens: int = 32,
        until=(),
        template: str = "open_ended",
        use_memory: bool = True,
    ):
        """Greedy decoding with the KV cache, from the open-ended ("Question: {prompt_text}\\nAnswer:")
        or summary ("Description:") template. ``prompt_text`` is used verbatim (callers may apply
        ``processor.normalize_question``). Stops at </s>, ``max_new_tokens`` or any ``until`` string.
        A list of texts (with a list of feature tensors) is decoded as one batch -> list of answers.

        Args:
            video_features: raw per-frame CLIP features [T, F], or a list of them for a batch.
            prompt_text: the question (open_ended) or ignored text (summary), or a list.
            max_new_tokens: decoding budget per answer.
            until: stop strings; the answer is cut before the first one.
            template: ``"open_ended"`` or ``"summary"``.
            use_memory: project the frames onto ``model.memory`` when one is loaded.
        """
        if isinstance(prompt_text, str):
            return self.generate_answer([video_features], [prompt_text], max_new_tokens, until, template, use_memory)[0]
        if len(video_features) != len(prompt_text):
            raise ValueError(f"batch sizes differ: {len(video_features)} videos, {len(prompt_text)} prompts")
        processor = self._require_processor()
        prompts = [self._generation_prompt(text, template) for text in prompt_text]
        with self.adapter.reuse_prompt_projections():
            generated = self._greedy(prompts, list(video_features), max_new_tokens, until, use_memory)
        answers = []
        for ids in generated:
            text = processor.decode(ids)
            for stop in until:
                text = text.split(stop)[0]
            answers.append(text.strip())
        return answers

    def _generation_prompt(self, text: str, template: str):
        processor = self._require_processor()
        if template == "open_ended":
            return processor.encode_open_ended(text, None)
        if template == "summary":
            return processor.encode_summary(None)
        raise ValueError(f"unknown template {template!r} (use 'open_ended' or 'summary')")

    def _greedy(self, prompts, features: list, max_new_tokens: int, until, use_memory: bool) -> list[list[int]]:
        """Token ids after each prompt: greedy, KV-cached, until </s>, a stop string or the limit."""
        eos = self._require_processor().eos_id
        inputs = [(p.input_ids, p.video_start) for p in prompts]
        logits, cache, lengths, starts = self._prefill(inputs, features, use_memory)
        generated: list[list[int]] = [[] for _ in prompts]
        active = set(range(len(prompts)))
        for step in range(max_new_tokens):
            tokens = logits.argmax(-1).tolist()
            for row in sorted(active):
                if tokens[row] == eos or self._stops(generated[row], tokens[row], until):
                    active.discard(row)
            if not active or step == max_new_tokens - 1:
                break
            out = self._continue(torch.tensor(tokens)[:, None], cache, lengths, starts, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1]
        return generated

    def _stops(self, generated: list[int], token: int, until) -> bool:
        """Append ``token``; True when the text now contains a stop string."""
        generated.append(token)
        return bool(until) and any(stop in self._require_processor().decode(generated) for stop in until)


def _right_pad(rows: list[list[int]], width: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[len(rows), width] token ids padded with ``pad`` on the right, and the mask of real tokens."""
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        valid[i, :len(row)] = True
    return ids, valid


def _first_difference(sequences: list[list[int]]) -> int:
    """Index of the first position where the token sequences are not all equal."""
    for index, column in enumerate(zip(*sequences)):
        if len(set(column)) > 1:
            return index
    raise ValueError("the choices tokenise to sequences that do not differ")
