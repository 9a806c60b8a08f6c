"""Question a TOPA checkpoint about one video, answered as ``lmms-eval --model topa`` answers it, with what it saw.

``Asker`` loads the checkpoint, its memory bank and CLIP once; ``Asker.ask`` reads the video with the
reader, frame sampling and normalisation of lmms-eval's ``VideoFeatureSource``, reads the question
and options as ``lmms.choices`` reads a task prompt, and ranks the options with ``score_choices`` (no
options: ``generate_answer``, lmms-eval's generate path). The ``Answer`` also says, per frame the model
saw, which textual frames of the memory it lies nearest to (``neighbors``) and how well the memory
covers it (``coverage``, the largest cosine, flagged below ``features.memory.coverage_threshold``).
``topa ask``, its ``--report`` page and the web demo are views of this one ``Answer``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from topa_plugin.features.clip import DEFAULT_MODEL, DEFAULT_PRETRAINED
from topa_plugin.utils.errors import TopaInputError

DEFAULT_NEIGHBORS = 3


class AskError(TopaInputError, ValueError):
    """A question that cannot be asked: missing or unreadable video, bad question or options, not a checkpoint."""


@dataclass
class Neighbor:
    """A memory row near a frame: its cosine, and the textual frame it came from (None: no provenance recorded)."""

    row: int
    cosine: float
    text: str | None = None
    tideo: str | None = None
    frame: int | None = None


@dataclass
class SampledFrame:
    """A frame the model saw: ``index`` in the video (row of a ``.npy``), ``timestamp`` in seconds (None for
    features), ``coverage`` its largest cosine to the memory (None without a memory), its nearest rows."""

    index: int
    timestamp: float | None
    coverage: float | None
    low_coverage: bool
    neighbors: list[Neighbor] = field(default_factory=list)


@dataclass
class Answer:
    """One question about one video, answered. ``answer_index`` None: free generation (``scores`` empty).

    ``scores`` are the options' mean NLLs in their order (lower is better); ``label`` is the reply
    lmms-eval's task would read ("B", "(B)", "2"); ``prompt`` is the text the model read, its video slots
    shown as one marker; ``images`` the decoded frames (uint8 [H, W, 3]; None for features), not in JSON."""

    video: str
    question: str
    options: list[str]
    answer_index: int | None
    answer: str
    scores: list[float]
    frames: list[SampledFrame]
    prompt: str
    coverage_threshold: float | None
    label: str | None = None
    correct_index: int | None = None
    padded_slots: int = 0
    memory_rows: int = 0
    provenance_note: str | None = None
    images: list[np.ndarray] | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        """Every field but ``images``, JSON-ready (the frames' pixels are never copied)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("images", "frames")}
        return {**data, "frames": [asdict(frame) for frame in self.frames]}


class Asker:
    """A checkpoint, its memory bank and CLIP, loaded once; ``ask`` may be called from several threads."""

    def __init__(self, model, source, *, memory_path: str | Path | None = None, neighbors: int = DEFAULT_NEIGHBORS):
        from topa_plugin.features.memory import coverage_threshold
        from topa_plugin.features.provenance import read_provenance

        if neighbors < 1:
            raise AskError(f"neighbors: must be at least 1, got {neighbors}")
        self.model, self.source, self.neighbors = model, source, int(neighbors)
        memory = model.memory
        self.memory_rows = 0 if memory is None else int(memory.shape[0])
        self.coverage_threshold = None if memory is None or memory.shape[0] < 2 else coverage_threshold(memory)
        if memory is None:
            self.provenance, self.provenance_note = None, "the checkpoint has no memory bank: frames are not projected"
        else:
            self.provenance, self.provenance_note = read_provenance(memory_path, self.memory_rows)
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, *, clip_model: str = DEFAULT_MODEL,
                        clip_pretrained: str | None = DEFAULT_PRETRAINED, memory: str | Path | None = None,
                        frames: int | None = None, device: str | None = None, dtype: str | None = None,
                        neighbors: int = DEFAULT_NEIGHBORS, quantization=None) -> Asker:
        """Load as ``lmms-eval --model topa --model_args pretrained=...,clip_model=...,memory=...,max_frames=...``.

        Args:
            checkpoint: a TOPA plugin directory (``topa train`` / ``topa convert-official``).
            clip_model: the open_clip encoder: a model name or a model-config JSON.
            clip_pretrained: its weights: an open_clip tag or a local weights file.
            memory: a memory-bank file instead of the checkpoint's ``memory.safetensors``.
            frames: frames decoded per video (default: the checkpoint's ``max_feats``).
            device: default cuda when available, else cpu.
            dtype: the LLM's (auto, float32, bfloat16, float16).
            neighbors: memory rows shown per frame.
            quantization: ``"8bit"``, ``"4bit"``, None or a ``QuantizationSettings``, as
                ``TopaForCausalLM.from_pretrained`` (the lmms-eval model_arg ``quantization=``).
        """
        import torch

        from topa_plugin.features.clip import encoder_identity
        from topa_plugin.lmms.feature_source import VideoFeatureSource, clip_loader
        from topa_plugin.modeling import TopaForCausalLM
        from topa_plugin.utils.constants import MEMORY_FILE, resolve_dtype

        directory = Path(checkpoint)
        if not directory.is_dir():
            raise AskError(f"checkpoint {directory}: folder not found")
        if not (directory / "config.json").is_file():
            raise AskError(f"checkpoint {directory}: no config.json, so not a TOPA plugin directory "
                           "(make one with `topa train` or `topa convert-official`)")
        if memory is not None and not Path(memory).is_file():
            raise AskError(f"memory {memory}: file not found")
        if frames is not None and frames < 1:
            raise AskError(f"frames: must be at least 1, got {frames}")
        where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            torch_dtype = resolve_dtype(dtype or "auto", where)
        except ValueError as exc:
            raise AskError(str(exc)) from None
        model = TopaForCausalLM.from_pretrained(directory, torch_dtype=torch_dtype, device=where, memory=memory,
                                                quantization=quantization)
        if model.processor is None:
            raise AskError(f"checkpoint {directory}: no tokenizer files in the plugin directory or its base model")
        config = model.config
        source = VideoFeatureSource(
            clip_loader(str(clip_model), clip_pretrained, config.feature_dim, directory, where),
            int(frames or config.max_feats), decode_workers=0,
            identity=encoder_identity(str(clip_model), clip_pretrained), dim=config.feature_dim,
        )
        memory_path = memory if memory is not None else (directory / MEMORY_FILE if model.memory is not None else None)
        return cls(model, source, memory_path=memory_path, neighbors=neighbors)

    def ask(self, video: str | Path, question: str, options: Sequence[str] = (), *,
            answer: int | str | None = None) -> Answer:
        """Answer ``question`` about ``video`` (a video file, or a ``.npy`` of frame features [T, D] as
        lmms-eval's ``feature_dir`` holds). Options: ranked by mean NLL; none: the answer is generated,
        unless the question itself lists options ("A. ...", one per line), as a task prompt does.
        ``answer``: the correct option (0-based index, or its label "B" / "(B)"), shown on the page."""
        asked, correct = check_question(question, options, answer)
        path = check_video(video)
        decoded = None if path.suffix == ".npy" else self.source.decode(path)  # outside the lock: beside the model
        with self._lock:
            features, images, indices, times = self._read(path, decoded)
            return self._answer(str(video), question, asked, features, images, indices, times, correct)

    def _read(self, path: Path, decoded):
        """(raw features [n, D], frames or None, frame index and time per feature row)."""
        from topa_plugin.lmms.feature_source import load_feature_array

        if decoded is None:
            features = load_feature_array(path, self.source.dim)
            return features, None, list(range(len(features))), [None] * len(features)
        features = self.source.encode_decoded(path, decoded)
        info = decoded.info
        indices = info.indices if info is not None and info.indices is not None else list(range(len(features)))
        times = info.times if info is not None and info.times is not None else [None] * len(features)
        return features, list(decoded.frames), indices, times

    def _answer(self, video, question, asked, features, images, indices, times, correct) -> Answer:
        import torch

        from topa_plugin.features.transforms import sampled_rows

        model, processor = self.model, self.model.processor
        max_feats = model.config.max_feats
        marker = f"<video: {max_feats} frame slots>"
        if asked is None:
            template = processor.open_ended_template(question.strip())
            text = model.generate_answer(features, question.strip())
            chosen, scores, label, reply = None, [], None, text
            texts: list[str] = []
        else:
            template = processor.multiple_choice_template(asked.question, list(asked.texts), None)
            losses = model.score_choices(features, asked.question, list(asked.texts))
            chosen = int(losses.argmin())
            scores, texts = [float(x) for x in losses], list(asked.texts)
            label, reply = asked.reply(chosen), asked.texts[chosen]
        rows = sampled_rows(len(features), max_feats)
        with torch.no_grad():
            frames = self._frames(features[rows], [indices[r] for r in rows], [times[r] for r in rows])
        return Answer(
            video=video, question=question, options=texts, answer_index=chosen, answer=reply, scores=scores,
            frames=frames, prompt=processor.prompt_text(template, marker), coverage_threshold=self.coverage_threshold,
            label=label, correct_index=correct, padded_slots=max_feats - len(rows), memory_rows=self.memory_rows,
            provenance_note=self.provenance_note, images=None if images is None else [images[r] for r in rows],
        )

    def _frames(self, features, indices: list[int], times: list) -> list[SampledFrame]:
        """Each shown frame's nearest memory rows by cosine (on the normalised frame, before projection)."""
        from topa_plugin.features.memory import nearest_rows
        from topa_plugin.features.transforms import l2_normalize

        memory = self.model.memory
        if memory is None:
            return [SampledFrame(int(i), t, None, False, []) for i, t in zip(indices, times)]
        cosines, rows = nearest_rows(l2_normalize(features.float()).to(memory.device), memory, self.neighbors)
        frames = []
        for index, time, near, row in zip(indices, times, cosines.tolist(), rows.tolist()):
            neighbors = [self._neighbor(r, c) for r, c in zip(row, near)]
            low = self.coverage_threshold is not None and near[0] < self.coverage_threshold
            frames.append(SampledFrame(int(index), time, near[0], low, neighbors))
        return frames

    def _neighbor(self, row: int, cosine: float) -> Neighbor:
        if self.provenance is None:
            return Neighbor(row, cosine)
        source = self.provenance[row]
        return Neighbor(row, cosine, source.text, source.tideo, source.frame)


def ask(video: str | Path, question: str, options: Sequence[str] = (), *, checkpoint: str | Path,
        answer: int | str | None = None, **kwargs) -> Answer:
    """One question, loading everything for it (``kwargs``: ``Asker.from_pretrained``'s); for several, keep an Asker."""
    return Asker.from_pretrained(checkpoint, **kwargs).ask(video, question, options, answer=answer)


def check_video(video: str | Path) -> Path:
    """``video`` as a path to ask about (a video file or a ``.npy``), or AskError naming it."""
    path = Path(video)
    if not path.is_file():
        raise AskError(f"video {path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}")
    return path


def check_question(question: str, options: Sequence[str] = (), answer: int | str | None = None):
    """(the question and options as the model will read them, or None for generation; the correct option's
    index or None), or AskError naming the bad field: what ``Asker.ask`` checks before any model work."""
    asked = _read_question(question, list(options))
    return asked, None if answer is None else _correct_index(answer, asked)


def _read_question(question: str, options: list[str]):
    """The question and options as lmms-eval reads a task prompt (``lmms.choices``): an ``OptionList``,
    or None for free generation. Options given: labels they all carry ("A. x") are read as labels."""
    from topa_plugin.lmms.choices import OptionList, clean_question, option_texts, parse_options

    if not isinstance(question, str) or not question.strip():
        raise AskError("question: empty; give the question to ask")
    if any(not isinstance(o, str) or not o.strip() for o in options):
        raise AskError(f"options: an option is empty ({options!r})")
    if len(options) == 1:
        raise AskError(f"options: only one ({options[0]!r}); give two or more, or none to generate an answer")
    if not options:
        try:
            return parse_options(question)
        except ValueError as exc:
            raise AskError(f"question: {exc}") from None
    block = parse_options("\n".join(options))
    if block is not None and len(block.texts) == len(options):
        labels, style, word = block.labels, block.style, block.word
    else:
        labels, style, word = tuple(chr(ord("A") + i) for i in range(len(options))), "{label}", ""
    if len(options) > 26:
        raise AskError(f"options: {len(options)} given; at most 26 can be lettered")
    return OptionList(clean_question(question.splitlines()), labels, tuple(option_texts(options)), style, word)


def _correct_index(answer: int | str, asked) -> int:
    """``answer`` as an option index: a label of the options ("B", "(B)"), else a 0-based index."""
    if asked is None:
        raise AskError("answer: given, but there are no options to mark as correct")
    text = str(answer).strip()
    labels = [label.upper() for label in asked.labels]
    if text.strip("()").upper() in labels:
        return labels.index(text.strip("()").upper())
    if text.isdigit() and int(text) < len(labels):
        return int(text)
    raise AskError(f"answer: {answer!r} is neither an option label ({', '.join(asked.labels)}) "
                   f"nor an index 0..{len(labels) - 1}")
