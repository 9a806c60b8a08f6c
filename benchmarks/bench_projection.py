"""Memory projection of 10 frames against a 1M x 768 fp16 memory: time and peak memory.

Compares, each in its own process (so peaks do not mix):
  naive   the one-line formula: fp32 copy of the memory, full [frames, N] softmax
  exact   topa_plugin.bridge.project_to_memory (chunked streaming softmax)
  top-k   project_to_memory(top_k=K), plus its cosine agreement with exact
Peak = extra resident memory during the first projection (Linux VmHWM after a reset);
time = best of --repeats later calls.

    python benchmarks/bench_projection.py                # 1M x 768, 10 frames, k=64, CPU
    python benchmarks/bench_projection.py --rows 200000  # quicker
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch


def clustered_memory(rows: int, dim: int, seed: int = 0, clusters: int = 20000) -> torch.Tensor:
    """Unit rows around random centres (text features cluster by topic), built in fp16 chunks."""
    from topa_plugin.features.transforms import l2_normalize

    g = torch.Generator().manual_seed(seed)
    centres = l2_normalize(torch.randn(clusters, dim, generator=g))
    memory = torch.empty(rows, dim, dtype=torch.float16)
    for s in range(0, rows, 65536):
        n = min(65536, rows - s)
        pick = torch.randint(0, clusters, (n,), generator=g)
        memory[s:s + n] = l2_normalize(centres[pick] + 0.03 * torch.randn(n, dim, generator=g)).half()
    return memory


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def naive(frames: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    m = memory.float()
    out = torch.softmax(100.0 * frames @ m.T, dim=-1) @ m
    return out / out.norm(dim=-1, keepdim=True)


def child(args) -> None:
    from topa_plugin.features.memory import project_to_memory
    from topa_plugin.features.transforms import l2_normalize

    torch.manual_seed(1)
    memory = clustered_memory(args.rows, args.dim)
    # image-side queries: perturbed memory rows (the modality gap), unit norm
    frames = l2_normalize(memory[torch.randint(0, args.rows, (args.frames,))].float()
                          + 0.05 * torch.randn(args.frames, args.dim))
    run = {"naive": lambda: naive(frames, memory),
           "exact": lambda: project_to_memory(frames, memory),
           "top-k": lambda: project_to_memory(frames, memory, top_k=args.top_k)}[args.mode]
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    before = _status_kib("VmRSS")
    result = run()  # the first call measures memory (later ones reuse freed pages) and warms up
    peak = _status_kib("VmHWM") - before
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    report = {"mode": args.mode, "seconds": min(times), "peak_mib": peak / 1024}
    if args.mode == "top-k":
        exact = project_to_memory(frames, memory)
        cosine = (exact * result).sum(-1)
        report.update(min_cosine=cosine.min().item(), mean_cosine=cosine.mean().item())
    print(json.dumps(report))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", default="naive,exact,top-k")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return child(args)
    results = {}
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--mode", mode, "--rows", str(args.rows), "--dim", str(args.dim),
               "--frames", str(args.frames), "--top-k", str(args.top_k), "--repeats", str(args.repeats)]
        results[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    base = results.get("exact")
    print(f"memory {args.rows} x {args.dim} fp16 ({args.rows * args.dim * 2 / 2**20:.0f} MiB), "
          f"{args.frames} frames, threads={torch.get_num_threads()}, CPU")
    print(f"{'mode':10}{'seconds':>10}{'peak MiB':>10}{'time/exact':>12}{'peak/exact':>12}")
    for mode, r in results.items():
        time_ratio = f"{r['seconds'] / base['seconds']:12.2f}" if base else ""
        # below 1 MiB the exact path's peak is allocator noise, not a meaningful denominator
        peak_ratio = f"{r['peak_mib'] / base['peak_mib']:12.1f}" if base and base["peak_mib"] >= 1 else f"{'-':>12}"
        print(f"{mode:10}{r['seconds']:10.3f}{r['peak_mib']:10.1f}{time_ratio}{peak_ratio}")
    if "top-k" in results:
        r = results["top-k"]
        print(f"top-k (k={args.top_k}) vs exact: min cosine {r['min_cosine']:.6f}, mean {r['mean_cosine']:.6f}")


if __name__ == "__main__":
    main()
