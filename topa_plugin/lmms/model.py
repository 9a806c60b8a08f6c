"""``lmms-eval --model topa``: TOPA zero-shot video QA as an lmms-eval simple model.

Every request goes video -> CLIP frame features (``VideoFeatureSource``: precomputed, cached or
decoded) -> ``TopaForCausalLM``: multiple-choice questions are ranked with ``score_choices``
(the TOPA protocol), everything else is generated greedily. Which options a request has is read
from its prompt (``choices.parse_options``), never from doc fields alone.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import closing
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
from topa_plugin.lmms.choices import AmbiguousOptionsError, parse_options, question_text
from topa_plugin.lmms.feature_source import FeatureFileError, VideoFeatureSource, VideoSourceError, clip_loader
from topa_plugin.lmms.request_log import RequestLog
from topa_plugin.processing import IGNORE_INDEX
from topa_plugin.quantization import QuantizationSettings, parse_bool
from topa_plugin.utils.constants import resolve_dtype

MC_MODES = ("score", "generate")
CAPTION_MODES = ("prompt", "release")


class TopaRequestError(RuntimeError):
    """A request that cannot be answered; names the task, doc id and file."""


def _until(gen_kwargs: dict) -> list[str]:
    until = gen_kwargs.get("until") or []
    return [until] if isinstance(until, str) else list(until)


class _Batches:
    """Items grouped by key; ``run(items)`` whenever a group reaches ``size``, and for the rest at ``flush``."""

    def __init__(self, size: int, run):
        self.size, self.run, self.groups = size, run, {}

    def add(self, key, item) -> None:
        group = self.groups.setdefault(key, [])
        group.append(item)
        if len(group) == self.size:
            self.run(self.groups.pop(key))

    def flush(self) -> None:
        for key in list(self.groups):
            self.run(self.groups.pop(key))


class Topa(lmms):
    """TOPA checkpoint (plugin directory) + open_clip encoder, evaluated on videos.

    ``--model_args``: ``pretrained`` (plugin dir), ``clip_model`` (open_clip name or config JSON),
    ``clip_pretrained`` (tag or weights file), ``memory`` (memory-bank file overriding the
    checkpoint's), ``use_memory``, ``max_frames`` (frames decoded per video; default the
    checkpoint's max_feats), ``device``, ``dtype``, ``batch_size`` (questions scored or generated per
    forward, and videos CLIP-encodes per call), ``decode_workers`` (processes decoding upcoming
    videos while the model works; default min(8, cores); 0 decodes inline),
    ``mc_mode`` (``score``: rank the options; ``generate``: free generation even for
    multiple-choice docs), ``feature_cache`` (dir), ``feature_dir`` (precomputed features by
    video id), ``caption_mode`` (``prompt``: requests that show no options are answered from the
    task's prompt; ``release``: they are captioned with the authors' protocol, see
    ``topa_plugin.captioning``), ``caption_protocol`` (``msrvtt`` or ``vatex``), ``request_log``
    (JSONL file: how each request was answered), ``quantization`` (``8bit`` or ``4bit``: the frozen LLM's linear
    layers through bitsandbytes, needs the [quant] extra) with ``quant_type`` (nf4/fp4) and ``double_quant`` for 4-bit.
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
        caption_mode: str = "prompt",
        caption_protocol: str = "msrvtt",
        request_log: str | None = None,
        decode_workers: int | None = None,
        max_batch_size: int | None = None,
        quantization: str | None = None,
        quant_type: str = QuantizationSettings.quant_type,
        double_quant: bool | str = QuantizationSettings.double_quant,
    ) -> None:
        super().__init__()
        from accelerate import Accelerator

        from topa_plugin.captioning import get_protocol
        from topa_plugin.features.clip import encoder_identity
        from topa_plugin.modeling import TopaForCausalLM

        if max_batch_size is not None:
            raise ValueError("topa: max_batch_size applies to batch_size=auto, which topa does not support")
        if mc_mode not in MC_MODES:
            raise ValueError(f"topa: mc_mode={mc_mode!r}; use one of {MC_MODES}")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"topa: batch_size={batch_size!r}; use a positive integer (no 'auto')")
        if caption_mode not in CAPTION_MODES:
            raise ValueError(f"topa: caption_mode={caption_mode!r}; use one of {CAPTION_MODES}")
        self.caption_protocol = get_protocol(caption_protocol) if caption_mode == "release" else None
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
        self.requests = RequestLog(request_log, self.rank)

        try:
            torch_dtype = resolve_dtype(dtype, self._device)
        except ValueError as exc:
            raise ValueError(f"topa: {exc}") from None
        quantized = QuantizationSettings(quantization, quant_type=quant_type, double_quant=parse_bool(double_quant))
        self._model = TopaForCausalLM.from_pretrained(pretrained, torch_dtype=torch_dtype, device=self._device,
                                                      memory=memory or None, quantization=quantized)
        config = self._model.config
        if self._model.processor is None:
            raise FileNotFoundError(f"{pretrained}: no tokenizer files in the plugin directory or its base model")
        if self.use_memory:
            self._model.warn_if_no_memory()

        clip = clip_loader(str(clip_model), clip_pretrained, config.feature_dim, pretrained, self._device)
        if decode_workers is not None and (not str(decode_workers).isdigit()):
            raise ValueError(f"topa: decode_workers={decode_workers!r}; use a count >= 0 (0: decode in this process)")
        self.features = VideoFeatureSource(
            clip,
            int(max_frames or config.max_feats), feature_cache, feature_dir,
            decode_workers=None if decode_workers is None else int(decode_workers),
            identity=encoder_identity(str(clip_model), clip_pretrained), dim=config.feature_dim,
        )

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
    def _videos(self, keys: list[tuple]) -> Iterator[torch.Tensor]:
        """Raw frame features [T, F] per (doc_to_visual, doc_id, task, split), in order, on the
        model's device (so the memory projection runs there). Videos are decoded ahead by the
        feature source's worker pool and CLIP-encoded ``batch_size`` at a time; errors name task,
        doc id and file."""
        sources = [self._find_video(*key) for key in keys]
        where = {}
        for source, (_, doc_id, task, _) in zip(sources, keys):
            if isinstance(source, Path):
                where.setdefault(source, f"task {task!r} doc {doc_id}")
        stream = self.features.stream([s for s in sources if isinstance(s, Path)], group=self.batch_size)
        with closing(stream):
            for source in sources:
                if isinstance(source, Path):
                    try:
                        source = next(stream)
                    except VideoSourceError as exc:
                        raise TopaRequestError(f"{where[exc.path]}: {exc}") from exc
                yield source.to(self._device)

    def _find_video(self, doc_to_visual, doc_id, task, split) -> torch.Tensor | Path:
        """Precomputed features of the doc's video, else its path."""
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
        if not path.is_file():
            raise TopaRequestError(f"{where}: {path}: video file not found")
        return path

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

        def answer(members: list, by_idx: dict) -> None:
            for position, request in members:
                results[position] = GenerationResult(text=by_idx[request.idx])
            progress.update(len(members))

        def rank(batch: list) -> None:
            members, questions, orders, texts, features = zip(*batch)
            losses = self._model.score_choices(list(features), list(questions), list(texts), use_memory=self.use_memory)
            for group, question, order, options, row in zip(members, questions, orders, texts, losses):
                best = order[int(row.argmin())]
                answer(group, {i: (float(loss), i == best) for i, loss in zip(order, row)})
                _, _, _, doc_id, task, split = group[0][1].args[:6]
                self.requests.write(task, doc_id, self.task_dict[task][split][doc_id], "loglikelihood",
                                    question=question, options=options, chosen=int(row.argmin()),
                                    losses=[float(x) for x in row])

        batches = _Batches(self.batch_size, rank)
        keys = [(members[0][1].args[2], doc_id, task, split) for (task, split, doc_id, _), members in groups.items()]
        for ((task, split, doc_id, ctx), members), features in zip(groups.items(), self._videos(keys)):
            doc = self.task_dict[task][split][doc_id]
            continuations = {}
            for _, request in members:
                cont = request.args[1]
                continuations[request.idx] = str(cont(doc) if callable(cont) else cont).strip()
            if len(continuations) > 1:
                order = sorted(continuations)
                question = self._read_prompt(question_text, ctx, doc, task, doc_id)
                batches.add(len(order), (members, question, order, [continuations[i] for i in order], features))
            else:
                (idx, cont), = continuations.items()
                by_idx = {idx: self._continuation_nll(features, ctx, cont)}
                self.requests.write(task, doc_id, doc, "loglikelihood", question=ctx, continuation=cont, loss=by_idx[idx][0])
                answer(members, by_idx)
        batches.flush()
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
    def _read_prompt(self, read, ctx: str, doc: dict, task: str, doc_id: int):
        """``read(ctx, doc)`` (``parse_options`` or ``question_text``); an ambiguous prompt fails
        naming the request."""
        try:
            return read(ctx, doc)
        except AmbiguousOptionsError as exc:
            raise TopaRequestError(f"task {task!r} doc {doc_id}: {exc}") from None

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Options shown in the prompt are ranked (``mc_mode=score``) and answered with the
        prompt's own label ("B", "(B)", "2", "Caption B"). Prompts that show none are captioned
        with the authors' protocol (``caption_mode=release``) or answered by greedy generation
        from the open-ended template with ``ctx`` as the question, verbatim (it may hold
        instructions that the release's lower-casing would garble)."""
        results: list = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="topa generate")

        def rank(batch: list) -> None:
            positions, features, options, ranked = zip(*batch)
            losses = self._model.score_choices(list(features), [o.question for o in options],
                                               [list(o.texts) for o in options], use_memory=self.use_memory)
            for position, option_list, row, request in zip(positions, options, losses, ranked):
                chosen = int(row.argmin())
                results[position] = option_list.reply(chosen)
                self._record(request, "rank", question=option_list.question, options=list(option_list.texts),
                             chosen=chosen, reply=results[position], losses=[float(x) for x in row])
            progress.update(len(batch))

        def generate(batch: list) -> None:
            positions, features, contexts, settings, asked = zip(*batch)
            for position, request, reply in zip(positions, asked, self._generate(list(features), contexts, settings[0])):
                results[position] = reply
                self._record(request, "caption" if self.caption_protocol else "generate", question=request.args[0],
                             reply=reply)
            progress.update(len(batch))

        choices, free = _Batches(self.batch_size, rank), _Batches(self.batch_size, generate)
        keys = [request.args[2:6] for request in requests]
        for (position, request), features in zip(enumerate(requests), self._videos(keys)):
            ctx, gen_kwargs, _, doc_id, task, split = request.args[:6]
            doc = self.task_dict[task][split][doc_id]
            options = self._read_prompt(parse_options, ctx, doc, task, doc_id) if self.mc_mode == "score" else None
            if options is not None:
                choices.add(len(options.texts), (position, features, options, request))
                continue
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0:
                eval_logger.warning("topa decodes greedily; ignoring sampling settings in gen_kwargs")
            settings = (int(gen_kwargs.get("max_new_tokens", 32)), tuple(_until(gen_kwargs)))
            free.add(settings, (position, features, ctx.strip(), settings, request))
        choices.flush()
        free.flush()
        progress.close()
        self._log_sources("generate_until")
        return results

    def _generate(self, features: list, contexts, settings: tuple[int, tuple]) -> list[str]:
        """Captions by the authors' protocol (``caption_mode=release``), else greedy open-ended
        text for the whole batch at once."""
        if self.caption_protocol is not None:
            from topa_plugin.captioning import caption_video

            return [caption_video(self._model, f, self.caption_protocol) for f in features]
        max_new_tokens, until = settings
        return self._model.generate_answer(features, list(contexts), max_new_tokens=max_new_tokens, until=list(until),
                                           use_memory=self.use_memory)

    def _record(self, request: Instance, mode: str, **fields) -> None:
        _, _, _, doc_id, task, split = request.args[:6]
        self.requests.write(task, doc_id, self.task_dict[task][split][doc_id], mode, **fields)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("topa answers single-round video questions; multi-round generation is not supported")
