"""Save and load the TOPA trainables of a plugin directory or a training checkpoint.

One pair for everyone (``TopaForCausalLM``, training resume, release conversion), so every load
names the file and key of any mismatch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from topa_plugin.utils.atomic import atomic_write
from topa_plugin.utils.constants import ADAPTER_FILE

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
