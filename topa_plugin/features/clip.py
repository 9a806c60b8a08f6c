"""open_clip encoders for TOPA features: a built-in name or a local config JSON,
with a pretrained tag or a local weights file. The identity string keys caches,
so features from different encoders never mix."""
from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from topa_plugin.utils.errors import TopaInputError, first_line
from topa_plugin.utils.hashing import file_sha256

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"
# The precisions open_clip's create_model_and_transforms knows; anything else would load fp32 silently.
CLIP_PRECISIONS = ("fp32", "fp16", "bf16", "pure_fp16", "pure_bf16")
_PREPROCESS_KEYS = {"mean": "image_mean", "std": "image_std",
                    "interpolation": "image_interpolation", "resize_mode": "image_resize_mode"}


class ClipLoadError(TopaInputError, ValueError):
    """A CLIP config, weights file or setting that cannot load; the message names it."""


def _register_config(config_path: Path) -> tuple[str, dict, str]:
    """Register a local model config with open_clip under a content-derived name.

    Accepts open_clip's model-config format ({embed_dim, vision_cfg, text_cfg}) or
    the hub format ({model_cfg, preprocess_cfg}). The name comes from the content
    hash so it can never shadow a built-in model such as ViT-L-14.
    Returns (registered name, preprocess overrides, content hash)."""
    import open_clip

    raw = config_path.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ClipLoadError(f"{config_path}: not a valid JSON open_clip config ({exc})") from exc
    model_cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(model_cfg, dict) or k not in model_cfg]
    if missing:
        raise ClipLoadError(f"{config_path}: open_clip config lacks field(s) {missing}")
    digest = hashlib.sha256(raw).hexdigest()
    name = f"topa-local-{digest[:16]}"
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / f"{name}.json"
        cfg_file.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(cfg_file)
    preprocess = {_PREPROCESS_KEYS[k]: v for k, v in data.get("preprocess_cfg", {}).items() if k in _PREPROCESS_KEYS}
    return name, preprocess, digest


@dataclass
class ClipEncoder:
    """A loaded open_clip model with its tokenizer and image transform."""

    model: torch.nn.Module
    tokenizer: Callable
    preprocess: Callable
    device: torch.device
    embed_dim: int
    identity: str

    @torch.inference_mode()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encode one batch of token ids; returns raw float32 embeddings on CPU."""
        return self.model.encode_text(tokens.to(self.device)).float().cpu()

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Raw (unnormalised) text embeddings [n, D], float32 on CPU, in input order.

        A helper thread tokenizes the next batch while the model encodes the current
        one: on a GPU, CLIP's pure-Python tokenizer is otherwise the bottleneck."""
        out = torch.empty(len(texts), self.embed_dim)
        batches = [list(texts[s:s + batch_size]) for s in range(0, len(texts), batch_size)]
        if not batches:
            return out
        start = 0
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.tokenizer, batches[0])
            for following in [*batches[1:], None]:
                tokens = pending.result()
                pending = pool.submit(self.tokenizer, following) if following is not None else None
                out[start:start + len(tokens)] = self.encode_tokens(tokens)
                start += len(tokens)
        return out

    @torch.inference_mode()
    def encode_images(self, images, batch_size: int = 64) -> torch.Tensor:
        """Raw image embeddings [n, D] for uint8 frames [N,H,W,3] or PIL images."""
        from PIL import Image

        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"expected uint8 frames [N,H,W,3], got {images.dtype} {images.shape}")
            images = [Image.fromarray(frame) for frame in images]
        out = torch.empty(len(images), self.embed_dim)
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocess(img) for img in images[start:start + batch_size]])
            feats = self.model.encode_image(pixels.to(self.device, dtype))
            out[start:start + len(pixels)] = feats.float().cpu()
        return out


def encoder_identity(model: str, pretrained: str | None) -> str:
    """The ``identity`` that ``load_clip(model, pretrained)`` gives, without loading anything
    (feature caches are looked up before CLIP is needed, if it is needed at all)."""
    model_path = Path(model)
    local_config = model.endswith(".json") or model_path.is_file()
    if local_config:
        if not model_path.is_file():
            raise ClipLoadError(f"open_clip config not found: {model}")
        model_id = f"config:{hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]}"
    else:
        model_id = model
    if pretrained is None:
        weights_id = "random"
    elif Path(pretrained).is_file():
        weights_id = f"file:{file_sha256(pretrained)[:16]}"
    elif Path(pretrained).suffix in {".pt", ".bin", ".safetensors", ".pth"}:
        raise ClipLoadError(f"CLIP weights file not found: {pretrained}")
    elif local_config:
        raise ClipLoadError(f"{model}: a model-config JSON has no pretrained tag {pretrained!r} (tags belong to "
                            "built-in open_clip models); give its weights file with --clip-pretrained")
    else:
        weights_id = pretrained
    return f"{model_id}|{weights_id}"


def configured_embed_dim(model: str) -> int | None:
    """The feature width a model's open_clip config declares, read without building the model
    (None for a name open_clip does not know; loading it will say so)."""
    import open_clip

    if model.endswith(".json") or Path(model).is_file():
        data = json.loads(Path(model).read_bytes())
        config = data.get("model_cfg", data) if isinstance(data, dict) else {}
    else:
        config = open_clip.get_model_config(model) or {}
    dim = config.get("embed_dim") if isinstance(config, dict) else None
    return int(dim) if dim is not None else None


def load_clip(model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
              device: str | torch.device = "cpu", precision: str | None = None) -> ClipEncoder:
    """Load an open_clip encoder; its ``identity`` keys every feature cache, so features of
    different encoders never mix.

    Args:
        model: an open_clip model name (``ViT-L-14``, the release's) or a model-config JSON path.
        pretrained: an open_clip tag (``openai``), a weights file, or None for random weights.
        device: where to run it.
        precision: one of ``CLIP_PRECISIONS`` (default: fp16 on GPU, fp32 on CPU).

    Raises:
        ClipLoadError: bad model, config, weights or precision, naming the file.
    """
    import open_clip

    device = torch.device(device)
    precision = precision or ("fp16" if device.type == "cuda" else "fp32")
    if precision not in CLIP_PRECISIONS:
        raise ClipLoadError(f"--precision {precision!r}: open_clip precisions are {', '.join(CLIP_PRECISIONS)}")
    identity = encoder_identity(model, pretrained)
    extra: dict = {}
    name = model
    if model.endswith(".json") or Path(model).is_file():
        name, extra, _ = _register_config(Path(model))
    try:
        clip_model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, precision=precision, device=device, **extra)
    except (RuntimeError, ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise ClipLoadError(f"CLIP {model} with weights {pretrained}: cannot load ({first_line(exc)})") from exc
    clip_model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    embed_dim = _embed_dim(clip_model, tokenizer, device)
    return ClipEncoder(clip_model, tokenizer, preprocess, device, embed_dim, identity)


@torch.inference_mode()
def _embed_dim(clip_model, tokenizer, device) -> int:
    """Read the output width by encoding one caption (configs name it differently)."""
    return int(clip_model.encode_text(tokenizer(["a"]).to(device)).shape[-1])
