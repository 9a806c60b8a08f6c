"""Distributed pre-alignment on CPU: training steps/s and peak RSS per rank, DDP vs ZeRO-2 vs ZeRO-3.

Each engine trains the same TOPA model (a random Llama of ``--shape``, frozen, fp32 on CPU) on the
bundled TextVid sample with random 768-d frame features, 2 ranks over gloo, through the real
launchers: ``torchrun`` for DDP, ``deepspeed`` with the shipped ``configs/zero2.json`` /
``zero3.json``. Steps/s is the Trainer's own ``train_steps_per_second`` (the training loop only,
not start-up); peak RSS is each rank's ``ru_maxrss``. Numbers are printed side by side, with
ratios against DDP; nothing is asserted.

    python benchmarks/bench_distributed.py                     # small Llama, 20 steps, batch 4 per rank
    python benchmarks/bench_distributed.py --shape toy --steps 10

The first DeepSpeed run on a machine JIT-builds DeepSpeed's CPU communication op (cached after).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"toy": (64, 4, 4, 172), "small": (256, 4, 4, 688)}  # hidden, layers, heads, intermediate
ENGINES = ("ddp", "zero2", "zero3")


def build_inputs(work: Path, shape: str) -> tuple[Path, Path]:
    """A random Llama directory (with a toy tokenizer) and a feature store for the TextVid sample."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from topa_plugin.demo import toy
    from topa_plugin.features.writer import write_sharded
    from topa_plugin.textvid import read_textvid, sample_path

    hidden, layers, heads, intermediate = SHAPES[shape]
    toy.train_toy_tokenizer(work / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=1024)
    LlamaForCausalLM(config).save_pretrained(work / "llm")
    tokenizer.save_pretrained(work / "llm")
    generator = torch.Generator().manual_seed(0)
    features = {r.idx: torch.nn.functional.normalize(torch.randn(len(r.frames), 768, generator=generator), dim=-1)
                for r in read_textvid(sample_path())}
    write_sharded(work / "features", {"kind": "bench", "encoder": "random", "dim": 768}, list(features),
                  list(features), lambda keys: {k: features[k] for k in keys}, shard_size=1000, dtype="float32")
    return work / "llm", work / "features"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(engine: str, work: Path, llm: Path, features: Path, args) -> dict:
    """Train with one engine on 2 ranks; returns steps/s and each rank's peak RSS (MiB)."""
    from topa_plugin.textvid import sample_path

    out = work / engine
    train = ["--model_name_or_path", str(llm), "--data_path", str(sample_path()), "--feature_folder", str(features),
             "--output_dir", str(out), "--per_device_train_batch_size", str(args.batch), "--max_steps",
             str(args.steps), "--save_strategy", "no", "--logging_steps", str(args.steps), "--max_seq_len", "400",
             "--adapter_len", "50", "--learning_rate", "1e-3", "--report_to", "none", "--disable_tqdm", "True",
             "--dataloader_num_workers", "0", "--trainer_backend", "plain"]
    if engine == "ddp":
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(free_port())]
    else:
        launcher = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
        train += ["--deepspeed", str(ROOT / "configs" / f"{engine}.json")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = work / f"{engine}.log"
    with log.open("w") as f:
        done = subprocess.run([*launcher, __file__, "--rank-entry", str(out), *train], env=env, stdout=f, check=False,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{engine} failed (exit {done.returncode}); last lines of {log}:\n{log.read_text()[-3000:]}")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    rss = [json.loads((out / f"rss.rank{r}.json").read_text())["max_rss_mib"] for r in range(2)]
    return {"steps_per_s": history[-1]["train_steps_per_second"], "rss_mib": rss}


def rank_entry(out: str, train_args: list[str]) -> int:
    """Runs in every rank: train, then record this process's peak RSS."""
    from topa_plugin.training.train import main

    status = main(train_args)
    rank = int(os.environ.get("RANK", "0"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    (Path(out) / f"rss.rank{rank}.json").write_text(json.dumps({"max_rss_mib": peak}))
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="per rank")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per rank")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        llm, features = build_inputs(work, args.shape)
        results = {engine: launch(engine, work, llm, features, args) for engine in args.engines}
    base = results.get("ddp")
    print(f"shape {args.shape}, 2 ranks x batch {args.batch}, {args.steps} steps, {args.threads} thread(s) per rank")
    print(f"{'engine':8} {'steps/s':>8} {'vs ddp':>7} {'peak RSS rank0/rank1 (MiB)':>28}")
    for engine, r in results.items():
        ratio = f"{r['steps_per_s'] / base['steps_per_s']:.2f}x" if base else "-"
        print(f"{engine:8} {r['steps_per_s']:8.2f} {ratio:>7} {r['rss_mib'][0]:13.0f} / {r['rss_mib'][1]:.0f}")


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    if argv[:1] == ["--rank-entry"]:
        sys.exit(rank_entry(argv[1], argv[2:]))
    main()
