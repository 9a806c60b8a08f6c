"""Save and load the TOPA trainables of a plugin directory or a training checkpoint (adapter, and LoRA when present).

One pair for everyone (``TopaForCausalLM``, training resume, release conversion), so every load
names the file and key of any mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from topa_plugin.utils.atomic import atomic_write, atomic_write_bytes
from topa_plugin.utils.constants import ADAPTER_FILE, LORA_CONFIG_FILE, LORA_FILE

PREFIX = "adapter."


def adapter_state_dict(adapter: nn.Module) -> dict[str, torch.Tensor]:
    """Trainables under the keys of ``adapter_model.safetensors`` ("adapter.*")."""
    return {f"{PREFIX}{name}": tensor for name, tensor in adapter.state_dict().items()}


def save_adapter(adapter: nn.Module, directory: str | Path) -> Path:
    """Write ``adapter_model.safetensors`` (CPU, contiguous) into ``directory``."""
    from safetensors.torch import save_file

    path = Path(directory) / ADAPTER_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in adapter_state_dict(adapter).items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def load_adapter(adapter: nn.Module, directory: str | Path) -> None:
    """Load ``adapter.*`` tensors from ``directory``, naming the file and key of any mismatch."""
    from safetensors.torch import load_file

    path = Path(directory) / ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the trained adapter weights)")
    tensors = load_file(str(path))
    foreign = sorted(k for k in tensors if not k.startswith(PREFIX))
    if foreign:
        raise ValueError(f"{path}: unexpected keys {foreign} (expected only '{PREFIX}*')")
    state = {k.removeprefix(PREFIX): v for k, v in tensors.items()}
    expected = adapter.state_dict()
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"{path}: missing keys {missing}, unexpected keys {extra}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{path}: {PREFIX}{key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    adapter.load_state_dict(state)


# The LoraConfig fields a TOPA run sets (training.train.build_model); the rest keep peft's defaults.
LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules")


def save_lora(llm: nn.Module, directory: str | Path) -> None:
    """Write the LoRA weights of a peft-wrapped ``llm`` (``lora_model.safetensors``) and its settings (``lora_config.json``)."""
    import peft
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in peft.get_peft_model_state_dict(llm).items()}
    config = llm.peft_config["default"]
    settings = {name: getattr(config, name) for name in LORA_FIELDS}
    settings["target_modules"] = sorted(settings["target_modules"])
    atomic_write_bytes(directory / LORA_CONFIG_FILE, json.dumps(settings, indent=1).encode())
    atomic_write(directory / LORA_FILE, lambda tmp: save_file(state, str(tmp)))


def read_lora_config(directory: Path) -> dict:
    """The LoRA settings saved beside ``lora_model.safetensors``."""
    path = directory / LORA_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the LoRA settings beside {LORA_FILE})")
    settings = json.loads(path.read_text(encoding="utf-8"))
    unknown = sorted(settings.keys() - set(LORA_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unexpected keys {unknown} (expected {', '.join(LORA_FIELDS)})")
    return settings


def load_lora(llm: nn.Module, directory: str | Path) -> nn.Module:
    """``llm`` wrapped with the directory's LoRA (unmerged), every LoRA tensor loaded; names the file of any mismatch.

    Works on a full-precision or a bitsandbytes base alike: peft puts its LoRA layers around either.
    An ``llm`` peft already wraps (training resume) only gets the weights.
    """
    import peft
    from safetensors.torch import load_file

    directory = Path(directory)
    weights_path = directory / LORA_FILE
    wrapped = llm if hasattr(llm, "peft_config") else peft.get_peft_model(llm, peft.LoraConfig(**read_lora_config(directory)))
    tensors = load_file(str(weights_path))
    expected = peft.get_peft_model_state_dict(wrapped)
    missing, extra = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"{weights_path}: missing keys {missing[:5]}, unexpected keys {extra[:5]}")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{weights_path}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    peft.set_peft_model_state_dict(wrapped, tensors)
    for name, param in wrapped.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()  # LoRA in full precision, as it trained
    return wrapped
