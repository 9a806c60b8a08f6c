"""Launcher target for the distributed tests: runs a training entry module and records what each rank did.

``python dist_probe.py [--local_rank=N] MODULE ARGS...`` (any launcher: torchrun, deepspeed) calls
``MODULE.main(ARGS)`` like ``python -m MODULE ARGS`` would, with ``TOPA_PROBE_DIR`` set:

- ``rank{R}.json``: the rank's node (``GROUP_RANK``) and working directory;
- ``samples.rank{R}.txt``: one ``epoch index`` line per training sample this rank drew;
- ``rank{R}.safetensors``: this rank's trainable parameters after training (ZeRO-3 gathered).

The records come from outside the code under test, so the tests can check what the ranks did
without trusting the trainer's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _record_samples(probe_dir: Path) -> None:
    from topa_plugin.training.textvid_dataset import TextVidDataset

    draw = TextVidDataset.__getitem__
    log = probe_dir / f"samples.rank{_rank()}.txt"

    def logged(self, index):
        with open(log, "a") as f:
            f.write(f"{self.epoch} {index}\n")
        return draw(self, index)

    TextVidDataset.__getitem__ = logged


def _gathered(params):
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned)


def _dump_trainables(module, probe_dir: Path) -> None:
    from safetensors.torch import save_file

    run = module.run

    def run_and_dump(*args, **kwargs):
        trainer = run(*args, **kwargs)
        model = trainer.accelerator.unwrap_model(trainer.model)
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        with _gathered([p for _, p in named]):
            state = {name: p.detach().cpu().clone().contiguous() for name, p in named}
        save_file(state, str(probe_dir / f"rank{_rank()}.safetensors"))
        return trainer

    module.run = run_and_dump


def main(argv: list[str]) -> int:
    argv = [a for a in argv if not a.startswith("--local_rank")]  # deepspeed's launcher adds it; LOCAL_RANK is set too
    name, args = argv[0], argv[1:]
    probe_dir = Path(os.environ["TOPA_PROBE_DIR"])
    probe_dir.mkdir(parents=True, exist_ok=True)
    where = {"node": int(os.environ.get("GROUP_RANK", "0")), "cwd": os.getcwd()}
    (probe_dir / f"rank{_rank()}.json").write_text(json.dumps(where))
    module = importlib.import_module(name)
    _record_samples(probe_dir)
    _dump_trainables(module, probe_dir)
    return module.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
