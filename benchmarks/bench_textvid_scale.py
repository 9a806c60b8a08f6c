"""TextVid at release scale: time and peak memory of every pass over a large TextVid file.

Generates ``--records`` synthetic release-schema Tideos (10 frames, 25 captions, 2 QAs with open
answers each, about 3.3 KB per record like the release's) as one JSON list, then runs each pass
in its own process and reports its wall time and peak RSS:

    validate   topa textvid validate FILE
    stats      topa textvid stats FILE
    report     topa textvid report FILE --out report.html (shortcuts, diversity, near-duplicate index, the page)
    features   topa features textvid (a tiny random CLIP, 16-wide text tower: the pass, not CLIP, is measured)
    memory     topa memory build --size 100000
    train      TextVidDataset construction, what `topa train` does before the model loads:
               schema, feature index (frame counts) and every prompt's length, Llama-2-like tokenizer
    restart    the same again, the scan's outcome now read from its cache (keyed by content)
    baseline   no data: the imports and the toy CLIP every pass above starts from (torch alone
               is about 0.7 GB of RSS with its CUDA libraries)

Every pass is also run at a fifth of the records, so the last columns extrapolate to the release's
721k Tideos from the measured growth (time and RSS linear in the records). "CPU s" is the pass's
process CPU time: on a shared machine it is closer than wall time to what an idle machine takes. Targets: RSS < 1 GB at
any size, training start-up < 30 s at 100k.

    python benchmarks/bench_textvid_scale.py                  # 100k records (about 15 min on 2 cores)
    python benchmarks/bench_textvid_scale.py --records 20000  # quicker
    python benchmarks/bench_textvid_scale.py --work DIR --stages memory train restart  # reuse DIR
    python benchmarks/bench_textvid_scale.py --records 20000 --busy 2  # beside two busy-loop processes

``--busy N`` runs N busy-loop processes beside every pass: per-record tiny torch ops, which
collapse when other processes hold the cores, show up as wall time far above CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RELEASE_RECORDS = 721_000
WORDS = ["person", "hand", "table", "cup", "knife", "bowl", "water", "door", "window", "chair", "kitchen", "dog",
         "ball", "car", "street", "tree", "walks", "picks", "opens", "pours", "cuts", "holds", "puts", "turns",
         "looks", "moves", "slowly", "quickly", "small", "large", "red", "green", "wooden", "metal", "near",
         "behind", "front", "left", "right", "top", "bottom", "inside", "outside"]
CAPTIONS = 500  # distinct caption texts
STAGES = ("baseline", "validate", "stats", "report", "features", "memory", "train", "restart")


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_record(i: int, rng: random.Random, captions: list[str]) -> dict:
    """One release-schema Tideo: 10 frames holding 25 captions (drawn from ``captions``, so CLIP encodes
    few distinct texts: the pass, not the encoder, is timed), a summary, 2 QAs with open answers."""
    per_frame = [3] * 5 + [2] * 5
    frames = [{f"caption_{j}": rng.choice(captions) for j in range(n)} for n in per_frame]
    qas = [{"question": f"what does the {_words(rng, 6)} do",
            "options": [f"{_words(rng, 5)} {o}" for o in range(5)],
            "answer": "ABCDE"[rng.randrange(5)], "answer_open_ended": _words(rng, 6)} for _ in range(2)]
    return {"idx": f"tideo_{i:07d}", "frames": frames, "global_video_caption": _words(rng, 30), "QAs": qas}


def generate(path: Path, n: int) -> None:
    """A release-style JSON list, written record by record (the same bytes for the same ``n``)."""
    rng = random.Random(0)
    captions = [f"{_words(rng, 8)} ({c})" for c in range(CAPTIONS)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("[")
        f.writelines(("," if i else "") + json.dumps(make_record(i, rng, captions)) for i in range(n))
        f.write("]\n")


def _toy_assets(work: Path) -> dict:
    """A tiny CLIP (config, weights) and a Llama-2-like sentencepiece tokenizer, built once."""
    from topa_plugin.demo import toy

    rng = random.Random(1)
    config, weights = toy.build_toy_clip(work / "clip", embed_dim=768, text_width=16)
    toy.train_toy_tokenizer(work / "tokenizer", tuple(_words(rng, 20) for _ in range(2000)), vocab_size=4000)
    return {"clip_config": str(config), "clip_weights": str(weights), "tokenizer": str(work / "tokenizer")}


def run_stage(stage: str, data: Path, work: Path, assets: dict) -> None:
    """One pass, in this (child) process."""
    from topa_plugin.cli import main

    store = work / f"store-{data.stem}"
    if stage == "baseline":  # the imports and models every pass starts from, no data
        import open_clip  # noqa: F401
        import transformers  # noqa: F401

        from topa_plugin.features.clip import load_clip

        load_clip(assets["clip_config"], assets["clip_weights"], "cpu")
        status = 0
    elif stage in ("validate", "stats"):
        status = main(["textvid", stage, str(data)])
    elif stage == "report":
        status = main(["textvid", "report", str(data), "--out", str(work / f"report-{data.stem}.html")])
    elif stage == "features":
        status = main(["features", "textvid", "--textvid", str(data), "--out", str(store), "--device", "cpu",
                       "--clip-model", assets["clip_config"], "--clip-pretrained", assets["clip_weights"],
                       "--batch-size", "1024"])
    elif stage == "memory":
        status = main(["memory", "build", "--features", str(store), "--size", "100000",
                       "--out", str(work / f"memory-{data.stem}.safetensors")])
    else:
        from transformers import AutoTokenizer

        from topa_plugin.processing import TopaProcessor
        from topa_plugin.training.textvid_dataset import TextVidDataset

        cache = work / f"scan-{data.stem}.json"
        if stage == "train":
            cache.unlink(missing_ok=True)  # a first start; "restart" finds the cache
        processor = TopaProcessor(AutoTokenizer.from_pretrained(assets["tokenizer"]), max_feats=10)
        status = 0 if len(TextVidDataset(data, store, processor, max_seq_len=150, scan_cache=cache)) else 1
    if status:
        raise SystemExit(f"{stage} exited with {status}")


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(stage: str, data: Path, work: Path, assets: dict) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the whole process, peak RSS in MB) of one pass in a fresh process."""
    script = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              f"import bench_textvid_scale as b, json; t = time.perf_counter(); "
              f"b.run_stage({stage!r}, b.Path({str(data)!r}), b.Path({str(work)!r}), {assets!r}); "
              f"import resource; u = resource.getrusage(resource.RUSAGE_SELF); "
              f"print('RESULT', time.perf_counter() - t, u.ru_utime + u.ru_stime, b.peak_rss_mb())")
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}  # the tokenizer's default
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                         env={**env, "TQDM_DISABLE": "1"})
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    if out.returncode or not lines:
        raise SystemExit(f"{stage} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    _, seconds, cpu, rss = lines[-1].split()
    return float(seconds), float(cpu), float(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes beside every pass (contention)")
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        run_all(args)
    finally:
        for process in busy:
            process.kill()


def run_all(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        assets = _toy_assets(work)
        sizes = (args.records // 5, args.records)
        files = {}
        for n in sizes:
            files[n] = work / f"textvid-{n}.json"
            if files[n].is_file():  # --work of an earlier run: the same bytes
                continue
            t = time.perf_counter()
            generate(files[n], n)
            print(f"generated {n} records: {files[n].stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s")
        print(f"{'pass':<10}{'records':>9}{'time s':>9}{'CPU s':>8}{'RSS MB':>9}{'small time':>12}{'small RSS':>11}"
              f"{'721k time s':>13}{'721k RSS MB':>13}")
        for stage in args.stages:
            (t_small, _, rss_small), (t_big, cpu, rss_big) = (measure(stage, files[n], work, assets) for n in sizes)
            scale = (RELEASE_RECORDS - sizes[1]) / (sizes[1] - sizes[0])
            t_release = t_big + max(0.0, t_big - t_small) * scale
            rss_release = rss_big + max(0.0, rss_big - rss_small) * scale
            print(f"{stage:<10}{sizes[1]:>9}{t_big:>9.1f}{cpu:>8.1f}{rss_big:>9.0f}{t_small:>12.1f}{rss_small:>11.0f}"
                  f"{t_release:>13.0f}{rss_release:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
