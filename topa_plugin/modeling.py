"""TopaForCausalLM: a frozen Hugging Face decoder LM plus the TOPA video adapter.

The LLM runs unchanged except for its attention kernel (``topa_plugin.attention``), which adds
the per-layer adapter prompts and the video bias in the top ``adapter_layer`` layers. All
trainable parameters live in ``self.adapter``; everything else is frozen.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from topa_plugin.attention import TOPA_ATTENTION, TopaAttentionState
from topa_plugin.configuration import TopaConfig
from topa_plugin.decoders import DecoderFamily, decoder_family
from topa_plugin.features import memory as memory_bank
from topa_plugin.features.transforms import l2_normalize, sample_frames
from topa_plugin.features.validation import check_frame_features
from topa_plugin.generation import TopaGenerationMixin
from topa_plugin.processing import IGNORE_INDEX, TopaProcessor
from topa_plugin.quantization import QuantizationSettings, compute_in_chosen_dtype, is_quantized
from topa_plugin.utils.atomic import share_like_new_files
from topa_plugin.utils.constants import BASE_DIR, LORA_FILE, MEMORY_FILE, TOKENIZER_FILES
from topa_plugin.utils.save_and_load import adapter_state_dict, load_adapter, load_lora, save_adapter

logger = logging.getLogger(__name__)

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

    def attention_state(
        self, config: TopaConfig, family: DecoderFamily, video_start: torch.Tensor | None, query_start: int, dtype
    ) -> TopaAttentionState:
        """The attention's per-forward inputs, cast once (tanh in float32, as the release does)."""
        prompts = self.adapter_query.weight.view(config.adapter_layer, self.adapter_len, -1)
        return TopaAttentionState(
            first_layer=config.first_adapter_layer,
            prompts=prompts.to(dtype),
            prompt_gate=torch.tanh(self.gate1.float()).to(dtype),
            video_gate=self.gate2.to(dtype),
            video_start=video_start,
            max_feats=config.max_feats,
            key_values=family.key_values,
            query_start=query_start,
            prompt_kv=self._prompt_kv,
        )


class TopaForCausalLM(TopaGenerationMixin, PreTrainedModel):
    """Frozen causal LM + TOPA adapter; zero-shot scoring and decoding come from ``TopaGenerationMixin``."""

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
        self.decoder_family = decoder_family(llm)
        llm.set_attn_implementation(TOPA_ATTENTION)
        llm.requires_grad_(False)
        compute_in_chosen_dtype(llm)  # 4-bit layers on CPU: no silent bf16 repacking (topa_plugin.quantization)
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
        return adapter_state_dict(self.adapter)

    # ----- inputs -----
    def prepare_video(self, features, use_memory: bool = True) -> torch.Tensor:
        """Raw per-frame CLIP features [T, F] -> [max_feats, F]: normalise, sample/pad, project to memory."""
        features = torch.as_tensor(features).to(device=self.adapter.visual_proj.weight.device, dtype=torch.float32)
        if features.ndim != 2 or features.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"video features must have shape [T, {self.config.feature_dim}], got {tuple(features.shape)}"
            )
        check_frame_features(features, "video features")
        frames = sample_frames(l2_normalize(features), self.config.max_feats)
        if use_memory and self.memory is not None:
            frames = memory_bank.project_to_memory(frames, self.memory, temperature=self.config.memory_temperature)
        elif use_memory:
            self.warn_if_no_memory()
        return frames

    def warn_if_no_memory(self) -> None:
        """Say once that zero-shot projection is off: a ``topa train`` output has no memory bank, and without
        one image features go in unprojected (the modality gap TOPA's projection closes stays open)."""
        if self.memory is not None or getattr(self, "_warned_no_memory", False):
            return
        self._warned_no_memory = True
        logger.warning(
            "%s has no memory bank (%s): video features are used without projection onto text features. Add one: "
            "memory=PATH in lmms-eval --model_args or model.memory = load_memory(PATH) (build it with `topa memory "
            "build` or `topa memory import`), or copy it into the checkpoint as %s; use_memory=False silences this.",
            getattr(self, "name_or_path", None) or "this TOPA model", MEMORY_FILE, MEMORY_FILE)

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
        logits_to_keep: int | torch.Tensor = 0,
        position_ids: torch.LongTensor | None = None,
    ) -> CausalLMOutputWithPast:
        """Logits (and, with ``labels``, mean shifted CE over labels != -100).

        Padded batches must be right-padded (every row starts at position 0), as the video span
        and the video bias are placed by absolute position. ``use_cache=None`` means no cache.
        ``position_ids`` [B, L]: each row's own positions for tokens appended to a cache of
        right-padded prompts (``generation``); the video span stays where the prompts put it.
        """
        embeds = self.llm.get_input_embeddings()(input_ids)
        past_len = 0 if past_key_values is None else _cached_length(past_key_values)
        start = self._video_start(video_start, input_ids.shape[0], input_ids.device)
        if video_features is not None:
            embeds = self._insert_video(embeds, video_features, start, past_len)
        out = self.llm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=past_key_values,
            use_cache=bool(use_cache),
            logits_to_keep=logits_to_keep,
            topa_state=self.adapter.attention_state(self.config, self.decoder_family, start, past_len, embeds.dtype),
        )
        loss = None
        if labels is not None:
            logits = out.logits[:, :-1].float()
            targets = labels[:, 1:].to(logits.device)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return CausalLMOutputWithPast(loss=loss, logits=out.logits, cache=out.cache)

    # ----- persistence -----
    def save_pretrained(self, save_directory, save_base: bool = False) -> None:
        """config.json + trainables (+ fp16 memory, tokenizer files, and base/ LLM weights if ``save_base``).

        Args:
            save_directory: the plugin directory to write (created if needed).
            save_base: also write the frozen LLM under ``base/`` (a self-contained directory);
                otherwise ``config.base_model_name_or_path`` must name it.
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.config)
        if save_base:
            self.llm.save_pretrained(directory / BASE_DIR)
            share_like_new_files(directory / BASE_DIR)
            config.base_model_name_or_path = BASE_DIR
        elif not config.base_model_name_or_path:
            raise ValueError("config.base_model_name_or_path is not set: set it or save with save_base=True")
        config.save_pretrained(directory)
        save_adapter(self.adapter, directory)
        if self.memory is not None:
            memory_bank.save_memory(self.memory, directory / MEMORY_FILE)
        if self.processor is not None:
            self.processor.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype=None, device=None, load_memory: bool = True,
                        memory=None, quantization: str | QuantizationSettings | None = None):
        """Load a plugin directory; the base LLM comes from ``base/`` or ``base_model_name_or_path``.

        Local paths are read with ``local_files_only``; only a Hugging Face id as base may download.
        A directory trained with LoRA on a quantized base (``lora_model.safetensors``, unmerged) gets its
        LoRA applied on top of the base, quantized or not.

        Args:
            pretrained_model_name_or_path: a plugin directory (``config.json`` + ``adapter_model.safetensors``).
            torch_dtype: dtype of the frozen LLM (the adapter stays float32); with quantization, of the
                parts bitsandbytes leaves unquantized (embeddings, norms, lm_head).
            device: where to put the model (default: CPU).
            load_memory: load ``memory.safetensors`` when the directory has one.
            memory: a memory-bank file (``load_memory``) used instead of the directory's.
            quantization: ``"8bit"``, ``"4bit"``, None (full precision), or a ``QuantizationSettings`` for
                the 4-bit options (``quant_type`` nf4/fp4, ``double_quant``, ``compute_dtype``). Only the
                LLM's linear layers are quantized; the adapter and any LoRA stay in full precision.

        Raises:
            FileNotFoundError: no plugin directory, or its base model is missing.
            ValueError: the base model's shape differs from the config, or adapter keys or shapes
                do not match (naming the file and key).
            QuantizationError: an unknown quantization value, or bitsandbytes is not installed.
        """
        settings = QuantizationSettings.coerce(quantization)
        directory = Path(pretrained_model_name_or_path)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory}: no config.json (not a TOPA plugin directory)")
        config = TopaConfig.from_pretrained(directory, local_files_only=True)
        base_path = _resolve_base(directory, config.base_model_name_or_path)
        llm = load_llm(base_path, torch_dtype, settings, device)
        cls._check_llm(llm.config, config.text_config, f"base model {base_path}")
        model = cls(config, llm=llm)
        model.name_or_path = str(directory)  # named in warnings
        load_adapter(model.adapter, directory)
        if (directory / LORA_FILE).exists():
            model.llm = load_lora(model.llm, directory).requires_grad_(False)  # frozen, like the LLM it adapts
        if memory is not None:
            model.memory = memory_bank.load_memory(memory)
            if model.memory.shape[1] != config.feature_dim:
                raise ValueError(f"{memory}: memory rows have dim {model.memory.shape[1]}, "
                                 f"the checkpoint {directory} expects {config.feature_dim}")
        elif load_memory and (directory / MEMORY_FILE).exists():
            model.memory = memory_bank.load_memory(directory / MEMORY_FILE)
        for source in (directory, Path(base_path)):
            if any((source / name).exists() for name in TOKENIZER_FILES):
                model.processor = TopaProcessor.from_pretrained(source, max_feats=config.max_feats)
                break
        model.eval()
        return model.place(device)

    def place(self, device=None) -> TopaForCausalLM:
        """Move to ``device``; a bitsandbytes LLM was placed when it loaded (it cannot move), the rest follows it."""
        if device is None:
            return self
        if not is_quantized(self.llm):
            return self.to(device)
        for name, child in self.named_children():
            if name != "llm":
                child.to(device)
        if self.memory is not None:
            self.memory = self.memory.to(device)
        return self


def load_llm(base_path: str, torch_dtype=None, quantization: str | QuantizationSettings | None = None, device=None):
    """The frozen LLM, in full precision or quantized by bitsandbytes (placed on ``device`` as it loads).

    Under DeepSpeed ZeRO-3 no device map is passed (transformers refuses one there): bitsandbytes then
    quantizes onto the process's current device and ZeRO-3 partitions the quantized weights.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    settings = QuantizationSettings.coerce(quantization)
    options = {"dtype": torch_dtype, "local_files_only": Path(base_path).exists()}
    if settings.enabled:
        device = torch.device(device or "cpu")
        if device.type == "cuda" and device.index is None:  # a device map names one card
            device = torch.device("cuda", torch.cuda.current_device())
        options["quantization_config"] = settings.bnb_config(device.type)
        if not is_deepspeed_zero3_enabled():
            options["device_map"] = {"": device}
        logger.info("loading %s with its linear layers in %s", base_path, settings.describe())
    return AutoModelForCausalLM.from_pretrained(base_path, **options)


def _cached_length(cache) -> int:
    """Positions already in ``cache``; only caches whose layers return every key up to the query qualify.

    The video bias is placed by absolute position (topa_plugin.attention): a DynamicCache's
    layers, sliding ones included, hand over the keys that end at the last query; static layers
    hand over fixed-size or rolled buffers, on which gate2 would land on the wrong keys silently.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers is None or not all(isinstance(layer, DynamicLayer) for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers or ()}) or [type(cache).__name__]
        raise ValueError(f"TOPA needs a DynamicCache (dynamic or sliding-window layers), got {', '.join(kinds)}")
    return cache.get_seq_length()


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
