"""benchmarks/gpu_acceptance.py on toy shapes on CPU (``--tiny --device cpu``): every stage a GPU session would run
(loading in full precision and 4-bit, batched scoring, the real lmms-eval CLI on generated clips, DeepSpeed ZeRO-2
training through torchrun, captioning) runs here, so the prepared GPU script cannot rot."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")
pytest.importorskip("lmms_eval")
pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = [
    ("load", "fp32", "seconds"), ("load", "fp32", "peak GB"), ("load", "4bit", "seconds"), ("load", "4bit", "peak GB"),
    *[("score_choices", f"{p} batch {b}", "questions/s") for p in ("fp32", "4bit") for b in (1, 8, 16)],
    ("captioning", "float32", "s/caption"),
    ("lmms-eval", f"{os.cpu_count()} decode workers", "questions/s"), ("lmms-eval", "2 questions", "wall seconds"),
    ("lmms-eval", "projected 5031", "minutes"),
    ("training", "tiny, ZeRO-2, bits 16", "steps/s"), ("training", "tiny, ZeRO-2, bits 16", "peak GB"),
]


def test_tiny_acceptance_run_prints_every_row(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--tiny", "--device", "cpu",
                           "--questions", "1", "--train-steps", "3", "--workdir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    table = done.stdout[done.stdout.index("GPU acceptance on CPU (cpu)"):].splitlines()[2:]
    rows = [(line[:14].strip(), line[15:47].strip(), line[48:62].strip(), float(line[63:])) for line in table if line.strip()]
    assert [row[:3] for row in rows] == EXPECTED
    for stage, setting, metric, value in rows:
        assert math.isfinite(value) and (value > 0 or metric == "peak GB"), (stage, setting, metric, value)
