"""``lmms-eval --model topa``: TOPA zero-shot video QA as an lmms-eval simple model.

Every request goes video -> CLIP frame features (``VideoFeatureSource``: precomputed, cached or
decoded) -> ``TopaForCausalLM``: multiple-choice questions are ranked with ``score_choices``
(the TOPA protocol), everything else is generated greedily.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from loguru import logger as eval_logger
from tqdm import tqdm

try:
    from lmms_eval.api.instance import GenerationResult, Instance
    from lmms_eval.api.model import lmms
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("topa_plugin.lmms needs lmms-eval: pip install 'topa-plugin[eval]'") from exc

from topa_plugin.features.clip import DEFAULT_MODEL, DEFAULT_PRETRAINED
from topa_plugin.lmms.choices import doc_options, letters_and_texts, options_from_prompt
from topa_plugin.lmms.feature_source import FeatureFileError, VideoFeatureSource
from topa_plugin.processing import IGNORE_INDEX

MC_MODES = ("score", "generate")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TopaRequestError(RuntimeError):
    """A request that cannot be answered; names the task, doc id and file."""


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"topa: dtype={name!r}; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _until(gen_kwargs: dict) -> list[str]:
    until = gen_kwargs.get("until") or []
    return [until] if isinstance(until, str) else list(until)


class Topa(lmms):
    """TOPA checkpoint (plugin directory) + open_clip encoder, evaluated on videos.

    ``--model_args``: ``pretrained`` (plugin dir), ``clip_model`` (open_clip name or config JSON),
    ``clip_pretrained`` (tag or weights file), ``memory`` (memory-bank file overriding the
    checkpoint's), ``use_memory``, ``max_frames`` (frames decoded per video; default the
    checkpoint's max_feats), ``device``, ``dtype``, ``batch_size`` (questions scored per call),
    ``mc_mode`` (``score``: rank the options; ``generate``: free generation even for
    multiple-choice docs), ``feature_cache`` (dir), ``feature_dir`` (precomputed features by
    video id).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        clip_model: str = DEFAULT_MODEL,
        clip_pretrained: str = DEFAULT_PRETRAINED,
        memory: str | None = None,
        use_memory: bool = True,
        max_frames: int | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        mc_mode: str = "score",
        feature_cache: str | None = None,
        feature_dir: str | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        from accelerate import Accelerator

        from topa_plugin.features.clip import load_clip
        from topa_plugin.features.memory import load_memory
        from topa_plugin.modeling import TopaForCausalLM

        if max_batch_size is not None:
            raise ValueError("topa: max_batch_size applies to batch_size=auto, which topa does not support")
        if mc_mode not in MC_MODES:
            raise ValueError(f"topa: mc_mode={mc_mode!r}; use one of {MC_MODES}")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"topa: batch_size={batch_size!r}; use a positive integer (no 'auto')")
        self.mc_mode = mc_mode
        self.use_memory = bool(use_memory)
        self.batch_size_per_gpu = int(batch_size)
        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:
            self._device = self.accelerator.device
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        self._model = TopaForCausalLM.from_pretrained(pretrained, torch_dtype=_dtype(dtype, self._device), device=self._device)
        config = self._model.config
        if self._model.processor is None:
            raise FileNotFoundError(f"{pretrained}: no tokenizer files in the plugin directory or its base model")
        if memory:
            bank = load_memory(memory)
            if bank.shape[1] != config.feature_dim:
                raise ValueError(f"{memory}: memory rows have dim {bank.shape[1]}, "
                                 f"the checkpoint {pretrained} expects {config.feature_dim}")
            self._model.memory = bank.to(self._device)

        encoder = load_clip(str(clip_model), clip_pretrained, device=self._device)
        if encoder.embed_dim != config.feature_dim:
            raise ValueError(
                f"CLIP model {clip_model} ({clip_pretrained}) gives {encoder.embed_dim}-d features, but the "
                f"checkpoint {Path(pretrained) / 'config.json'} expects feature_dim={config.feature_dim}"
            )
        self.features = VideoFeatureSource(encoder, int(max_frames or config.max_feats), feature_cache, feature_dir)

    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    # ----- videos -----
    def _video(self, doc_to_visual, doc_id, task, split) -> torch.Tensor:
        """Raw frame features [T, F] of the doc's video on the model's device (so the memory
        projection runs there, not on the CPU); errors name task, doc id and file."""
        return self._find_video(doc_to_visual, doc_id, task, split).to(self._device)

    def _find_video(self, doc_to_visual, doc_id, task, split) -> torch.Tensor:
        doc = self.task_dict[task][split][doc_id]
        where = f"task {task!r} doc {doc_id}"
        if doc.get("video_idx") is not None:
            features = self._precomputed(str(doc["video_idx"]), where)
            if features is not None:
                return features
        try:
            visuals = doc_to_visual(doc)
        except SystemExit as exc:  # lmms-eval's egoschema_doc_to_visual exits on a missing video
            raise TopaRequestError(f"{where}: {exc.code}") from None
        except FileNotFoundError as exc:
            raise TopaRequestError(f"{where}: {exc}") from exc
        videos = [v for v in visuals or [] if isinstance(v, (str, os.PathLike))]
        if len(videos) != 1:
            raise TopaRequestError(f"{where}: TOPA needs exactly one video path per doc, got {visuals!r}")
        path = Path(videos[0])
        features = self._precomputed(path.stem, where)
        if features is not None:
            return features
        from topa_plugin.features.video import VideoDecodeError

        try:
            return self.features.get(path)
        except (VideoDecodeError, FeatureFileError) as exc:
            raise TopaRequestError(f"{where}: {exc}") from exc

    def _precomputed(self, video_id: str, where: str) -> torch.Tensor | None:
        try:
            return self.features.precomputed(video_id)
        except FeatureFileError as exc:
            raise TopaRequestError(f"{where}: {exc}") from exc

    def _log_sources(self, what: str) -> None:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.features.counts.items())) or "none"
        eval_logger.info(f"topa {what}: video features so far: {counts}")

    # ----- loglikelihood -----
    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """(mean NLL, is_greedy) per request, lower is better.

        Requests of one doc and context with several continuations are the options of a
        multiple-choice question (``idx`` = option index): all are scored together under the TOPA
        multiple-choice template with ``ctx`` as the question. A single continuation is scored
        under the open-ended template. Results are wrapped in ``GenerationResult`` because
        lmms-eval 0.7.3 turns bare tuples into strings. (Its ``--use_cache`` response cache cannot
        store these results, nor bare tuples; the feature cache makes reruns cheap instead.)
        """
        groups: OrderedDict = OrderedDict()
        for position, request in enumerate(requests):
            if len(request.args) < 6:
                raise TopaRequestError(f"task {request.task_name!r} doc {request.doc_id}: loglikelihood request without "
                                       f"a video (args {request.args!r}); TOPA cannot score it")
            ctx, _, doc_to_visual, doc_id, task, split = request.args[:6]
            groups.setdefault((task, split, doc_id, ctx), []).append((position, request))
        results: list = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="topa loglikelihood")
        for (task, split, doc_id, ctx), members in groups.items():
            doc_to_visual = members[0][1].args[2]
            doc = self.task_dict[task][split][doc_id]
            continuations = {}
            for _, request in members:
                cont = request.args[1]
                continuations[request.idx] = str(cont(doc) if callable(cont) else cont).strip()
            features = self._video(doc_to_visual, doc_id, task, split)
            if len(continuations) > 1:
                order = sorted(continuations)
                losses = self._model.score_choices(features, ctx, [continuations[i] for i in order], use_memory=self.use_memory)
                best = order[int(losses.argmin())]
                by_idx = {i: (float(loss), i == best) for i, loss in zip(order, losses)}
            else:
                (idx, cont), = continuations.items()
                by_idx = {idx: self._continuation_nll(features, ctx, cont)}
            for position, request in members:
                results[position] = GenerationResult(text=by_idx[request.idx])
            progress.update(len(members))
        progress.close()
        self._log_sources("loglikelihood")
        return results

    @torch.no_grad()
    def _continuation_nll(self, features, ctx: str, continuation: str) -> tuple[float, bool]:
        """Mean NLL of ``continuation`` as the answer of the open-ended template, and whether greedy."""
        prompt = self._model.processor.encode_open_ended(ctx, continuation)
        ids = torch.tensor([prompt.input_ids], device=self._device)
        labels = torch.tensor([prompt.labels], device=self._device)
        video = self._model.prepare_video(features, self.use_memory)[None]
        out = self._model(ids, video, prompt.video_start, labels=labels)
        scored = labels[0, 1:] != IGNORE_INDEX
        greedy = bool((out.logits[0, :-1].argmax(-1)[scored] == labels[0, 1:][scored]).all())
        return float(out.loss), greedy

    # ----- generation -----
    def _options(self, ctx: str, doc: dict) -> tuple[str, list[str], list[str]] | None:
        """(question, letters, option texts) of a multiple-choice doc, else None."""
        options = doc_options(doc)
        if options is not None:
            question = doc.get("question")
            if not isinstance(question, str):
                parsed = options_from_prompt(ctx)
                question = parsed[0] if parsed else ctx
        else:
            parsed = options_from_prompt(ctx)
            if parsed is None:
                return None
            question, options = parsed
        letters, texts = letters_and_texts(options)
        return question, letters, texts

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Option letter by TOPA ranking for multiple-choice docs (``mc_mode=score``); otherwise
        greedy generation from the open-ended template with ``ctx`` as the question, verbatim
        (it may hold options and instructions that the release's lower-casing would garble)."""
        results: list = [None] * len(requests)
        pending: dict[int, list] = {}  # option count -> [(position, features, question, letters, texts)]
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="topa generate")

        def rank(batch: list) -> None:
            positions, features, questions, letters, texts = zip(*batch)
            losses = self._model.score_choices(list(features), list(questions), list(texts), use_memory=self.use_memory)
            for position, option_letters, row in zip(positions, letters, losses):
                results[position] = option_letters[int(row.argmin())]
            progress.update(len(batch))

        for position, request in enumerate(requests):
            ctx, gen_kwargs, doc_to_visual, doc_id, task, split = request.args[:6]
            options = self._options(ctx, self.task_dict[task][split][doc_id]) if self.mc_mode == "score" else None
            features = self._video(doc_to_visual, doc_id, task, split)
            if options is not None:
                question, letters, texts = options
                batch = pending.setdefault(len(texts), [])
                batch.append((position, features, question, letters, texts))
                if len(batch) == self.batch_size:
                    rank(pending.pop(len(texts)))
                continue
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0:
                eval_logger.warning("topa decodes greedily; ignoring sampling settings in gen_kwargs")
            results[position] = self._model.generate_answer(
                features, ctx.strip(), max_new_tokens=int(gen_kwargs.get("max_new_tokens", 32)),
                until=_until(gen_kwargs), use_memory=self.use_memory,
            )
            progress.update(1)
        for batch in pending.values():
            rank(batch)
        progress.close()
        self._log_sources("generate_until")
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("topa answers single-round video questions; multi-round generation is not supported")
