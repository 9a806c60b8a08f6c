"""TopaConfig: the frozen LLM's config plus the few numbers that shape the TOPA adapter.

The LLM config is kept whole (``text_config``) so a plugin directory can rebuild or check the
base model without downloading anything; the base weights themselves are referenced by
``base_model_name_or_path``.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig


class TopaConfig(PreTrainedConfig):
    """Configuration of :class:`~topa_plugin.modeling.TopaForCausalLM`.

    ``adapter_layer`` counts the top layers that get adapter prompts and the video bias
    (``None``: all layers, as in the release). ``base_model_name_or_path`` is a Hugging Face id,
    a path, or ``"base"`` (relative to the plugin directory) for self-contained directories.
    """

    model_type = "topa"
    sub_configs_defaults: ClassVar[dict] = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    base_model_name_or_path: str | None = None
    feature_dim: int = 768
    max_feats: int = 10
    adapter_len: int = 50
    adapter_layer: int | None = None
    video_bias_init: float = -3.5
    memory_temperature: float = 100.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        n_layers = self.text_config.num_hidden_layers
        if self.adapter_layer is None:
            self.adapter_layer = n_layers
        if not 1 <= self.adapter_layer <= n_layers:
            raise ValueError(f"TopaConfig.adapter_layer={self.adapter_layer} must be in 1..{n_layers} (LLM layers)")
        for name in ("feature_dim", "max_feats", "adapter_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"TopaConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def first_adapter_layer(self) -> int:
        """Index of the lowest LLM layer with adapter prompts (slot 0)."""
        return self.text_config.num_hidden_layers - self.adapter_layer


# Lets AutoConfig (and AutoTokenizer, which reads config.json first) recognise plugin directories.
AutoConfig.register(TopaConfig.model_type, TopaConfig, exist_ok=True)
