"""TopaForCausalLM: a frozen Hugging Face Llama-family LM plus the TOPA video adapter.

The LLM runs unchanged except for its attention kernel (``topa_plugin.attention``), which adds
the per-layer adapter prompts and the video bias in the top ``adapter_layer`` layers. All
trainable parameters live in ``self.adapter``; everything else is frozen.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from . import bridge
from .attention import TOPA_ATTENTION, TopaAttentionState
from .configuration import TopaConfig
from .prompts import IGNORE_INDEX, TopaProcessor

ADAPTER_FILE = "adapter_model.safetensors"
MEMORY_FILE = "memory.safetensors"
BASE_DIR = "base"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class TopaAdapter(nn.Module):
    """The trainable parts: visual projection, temporal embedding, adapter prompts and per-head gates.

    Kept in float32 whatever the LLM's dtype; values are cast to the LLM's dtype where they
    enter it, as the release does.
    """

    def __init__(self, config: TopaConfig):
        super().__init__()
        text = config.text_config
        self.visual_proj = nn.Linear(config.feature_dim, text.hidden_size, bias=False)
        self.temporal_emb = nn.Embedding(config.max_feats, text.hidden_size)
        self.adapter_query = nn.Embedding(config.adapter_layer * config.adapter_len, text.hidden_size)
        # gate1 starts at zero so that training starts from the unchanged LLM.
        self.gate1 = nn.Parameter(torch.zeros(config.adapter_layer, text.num_attention_heads))
        self.gate2 = nn.Parameter(torch.full((config.adapter_layer, text.num_attention_heads), config.video_bias_init))
        self.adapter_len = config.adapter_len
        self._prompt_kv: dict | None = None

    @contextmanager
    def reuse_prompt_projections(self):
        """Project each layer's prompts through its frozen k/v once for the whole block.

        For inference calls that run several forwards with unchanged weights (prefix + choices,
        greedy decoding): re-projecting 50 prompts in every layer costs more than a 1-token step.
        """
        self._prompt_kv = {}
        try:
            yield
        finally:
            self._prompt_kv = None

    def video_embeddings(self, video_features: torch.Tensor) -> torch.Tensor:
        """[B, max_feats, F] prepared features -> [B, max_feats, d] embeddings."""
        weight = self.visual_proj.weight
        return self.visual_proj(video_features.to(device=weight.device, dtype=weight.dtype)) + self.temporal_emb.weight

    def attention_state(self, config: TopaConfig, video_start: torch.Tensor | None, dtype) -> TopaAttentionState:
        """The attention's per-forward inputs, cast once (tanh in float32, as the release does)."""
        prompts = self.adapter_query.weight.view(config.adapter_layer, self.adapter_len, -1)
        return TopaAttentionState(
            first_layer=config.first_adapter_layer,
            prompts=prompts.to(dtype),
            prompt_gate=torch.tanh(self.gate1.float()).to(dtype),
            video_gate=self.gate2.to(dtype),
            video_start=video_start,
            max_feats=config.max_feats,
            prompt_kv=self._prompt_kv,
        )


class TopaForCausalLM(PreTrainedModel):
    """Frozen causal LM + TOPA adapter; see CONTRACT.md "Core API"."""

    config_class = TopaConfig
    base_model_prefix = "llm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: TopaConfig, llm: PreTrainedModel | None = None):
        super().__init__(config)
        if llm is None:
            llm = AutoModelForCausalLM.from_config(config.text_config)
        self._check_llm(llm.config, config.text_config, "the given LLM")
        llm.set_attn_implementation(TOPA_ATTENTION)
        llm.requires_grad_(False)
        config.text_config = llm.config
        if config.base_model_name_or_path is None and llm.name_or_path:
            config.base_model_name_or_path = str(llm.name_or_path)
        self.llm = llm
        self.adapter = TopaAdapter(config)
        self.register_buffer("memory", None, persistent=False)
        self.processor: TopaProcessor | None = None

    @staticmethod
    def _check_llm(found, expected, where: str) -> None:
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
            if getattr(found, field, None) != getattr(expected, field, None):
                raise ValueError(
                    f"{where}: {field}={getattr(found, field, None)} does not match the TOPA config's "
                    f"text_config.{field}={getattr(expected, field, None)}"
                )

    # ----- plumbing expected from a PreTrainedModel -----
    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainables under the keys of ``adapter_model.safetensors`` ("adapter.*")."""
        return {f"adapter.{name}": tensor for name, tensor in self.adapter.state_dict().items()}

    # ----- inputs -----
    def prepare_video(self, features, use_memory: bool = True) -> torch.Tensor:
        """Raw per-frame CLIP features [T, F] -> [max_feats, F]: normalise, sample/pad, project to memory."""
        features = torch.as_tensor(features).to(device=self.adapter.visual_proj.weight.device, dtype=torch.float32)
        if features.ndim != 2 or features.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"video features must have shape [T, {self.config.feature_dim}], got {tuple(features.shape)}"
            )
        frames = bridge.sample_frames(bridge.l2_normalize(features), self.config.max_feats)
        if use_memory and self.memory is not None:
            frames = bridge.project_to_memory(frames, self.memory, temperature=self.config.memory_temperature)
        return frames

    def _video_start(self, video_start, batch: int, device) -> torch.Tensor | None:
        if video_start is None:
            return None
        start = torch.as_tensor(video_start, dtype=torch.long, device=device).reshape(-1)
        if start.numel() == 1:
            start = start.expand(batch)
        if start.numel() != batch:
            raise ValueError(f"video_start has {start.numel()} entries for a batch of {batch}")
        return start

    def _insert_video(self, embeds, video_features, video_start, past_len: int) -> torch.Tensor:
        """Write the video embeddings over the placeholder slots inside this chunk of positions."""
        batch, length, _ = embeds.shape
        expected = (batch, self.config.max_feats, self.config.feature_dim)
        if tuple(video_features.shape) != expected:
            raise ValueError(f"video_features must have shape {expected} (prepared), got {tuple(video_features.shape)}")
        if video_start is None:
            raise ValueError("video_start is required with video_features")
        rel = video_start - past_len
        if bool((rel + self.config.max_feats <= 0).all()):
            return embeds  # the video span is already in the KV cache
        if bool((rel < 0).any()) or bool((rel + self.config.max_feats > length).any()):
            raise ValueError(
                f"video span at {video_start.tolist()} (+{self.config.max_feats}) is not inside the input "
                f"positions {past_len}..{past_len + length - 1}"
            )
        video = self.adapter.video_embeddings(video_features).to(embeds.dtype)
        rows = torch.arange(batch, device=embeds.device)[:, None]
        cols = rel[:, None] + torch.arange(self.config.max_feats, device=embeds.device)[None, :]
        embeds = embeds.clone()
        embeds[rows, cols] = video
        return embeds

    # ----- forward -----
    def forward(
        self,
        input_ids: torch.LongTensor,
        video_features: torch.Tensor | None = None,
        video_start=None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithPast:
        """Logits (and, with ``labels``, mean shifted CE over labels != -100).

        Padded batches must be right-padded (every row starts at position 0), as the video span
        and the video bias are placed by absolute position. ``use_cache=None`` means no cache.
        """
        embeds = self.llm.get_input_embeddings()(input_ids)
        past_len = 0 if past_key_values is None else past_key_values.get_seq_length()
        start = self._video_start(video_start, input_ids.shape[0], input_ids.device)
        if video_features is not None:
            embeds = self._insert_video(embeds, video_features, start, past_len)
        out = self.llm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            cache=past_key_values,
            use_cache=bool(use_cache),
            logits_to_keep=logits_to_keep,
            topa_state=self.adapter.attention_state(self.config, start, embeds.dtype),
        )
        loss = None
        if labels is not None:
            logits = out.logits[:, :-1].float()
            targets = labels[:, 1:].to(logits.device)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return CausalLMOutputWithPast(loss=loss, logits=out.logits, cache=out.cache)

    # ----- zero-shot scoring -----
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

    # ----- persistence -----
    def save_pretrained(self, save_directory, save_base: bool = False) -> None:
        """config.json + trainables (+ fp16 memory, tokenizer files, and base/ LLM weights if ``save_base``)."""
        from safetensors.torch import save_file

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.config)
        if save_base:
            self.llm.save_pretrained(directory / BASE_DIR)
            config.base_model_name_or_path = BASE_DIR
        elif not config.base_model_name_or_path:
            raise ValueError("config.base_model_name_or_path is not set: set it or save with save_base=True")
        config.save_pretrained(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        save_file(state, str(directory / ADAPTER_FILE), metadata={"format": "pt"})
        if self.memory is not None:
            bridge.save_memory(self.memory, directory / MEMORY_FILE)
        if self.processor is not None:
            self.processor.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype=None, device=None, load_memory: bool = True):
        """Load a plugin directory; the base LLM comes from ``base/`` or ``base_model_name_or_path``.

        Local paths are read with ``local_files_only``; only a Hugging Face id as base may download.
        ``torch_dtype`` applies to the LLM; the adapter stays float32.
        """
        directory = Path(pretrained_model_name_or_path)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory}: no config.json (not a TOPA plugin directory)")
        config = TopaConfig.from_pretrained(directory, local_files_only=True)
        base_path = _resolve_base(directory, config.base_model_name_or_path)
        llm = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=torch_dtype, local_files_only=Path(base_path).exists()
        )
        cls._check_llm(llm.config, config.text_config, f"base model {base_path}")
        model = cls(config, llm=llm)
        _load_adapter(model.adapter, directory / ADAPTER_FILE)
        if load_memory and (directory / MEMORY_FILE).exists():
            model.memory = bridge.load_memory(directory / MEMORY_FILE)
        for source in (directory, Path(base_path)):
            if any((source / name).exists() for name in _TOKENIZER_FILES):
                model.processor = TopaProcessor.from_pretrained(source, max_feats=config.max_feats)
                break
        model.eval()
        return model.to(device) if device is not None else model


def _first_difference(sequences: list[list[int]]) -> int:
    """Index of the first position where the token sequences are not all equal."""
    for index, column in enumerate(zip(*sequences)):
        if len(set(column)) > 1:
            return index
    raise ValueError("the choices tokenise to sequences that do not differ")


def _resolve_base(directory: Path, base: str | None) -> str:
    """Local base path (relative to the plugin directory first) or a Hugging Face id."""
    if not base:
        raise ValueError(f"{directory / 'config.json'}: base_model_name_or_path is not set")
    local = directory / base
    if local.exists():
        return str(local)
    if Path(base).exists():
        return base
    if base == BASE_DIR or base.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{directory / 'config.json'}: base model {base!r} not found")
    return base


def _load_adapter(adapter: TopaAdapter, path: Path) -> None:
    """Load ``adapter.*`` tensors, naming the file and key of any mismatch."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the trained adapter weights)")
    tensors = load_file(str(path))
    foreign = sorted(k for k in tensors if not k.startswith("adapter."))
    if foreign:
        raise ValueError(f"{path}: unexpected keys {foreign} (expected only 'adapter.*')")
    state = {k.removeprefix("adapter."): v for k, v in tensors.items()}
    expected = adapter.state_dict()
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"{path}: missing keys {missing}, unexpected keys {extra}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{path}: adapter.{key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    adapter.load_state_dict(state)

