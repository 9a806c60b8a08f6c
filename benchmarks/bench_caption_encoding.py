"""Caption-encoding throughput: `topa features textvid` pipeline vs bare open_clip.

Both sides encode the same distinct captions with the same model and batch size. The
pipeline time is the whole extraction (read the TextVid file, de-duplicate, sort,
encode, fuse per frame, write shards); bare is tokenizer + encode_text in a loop.
Target: pipeline overhead under 15%. Runs alternate; the best of --repeats counts.

    python benchmarks/bench_caption_encoding.py --model ViT-B-32 --records 60
    python benchmarks/bench_caption_encoding.py --model toy --records 400
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

WORDS = ["person", "woman", "man", "child", "dog", "cat", "knife", "onion", "pan", "pot", "stove", "table",
         "cup", "bottle", "ball", "court", "field", "garden", "lawn", "mower", "kitchen", "sink", "towel",
         "phone", "laptop", "bicycle", "road", "car", "tree", "bench", "door", "window", "picks", "cuts",
         "stirs", "pours", "washes", "opens", "closes", "walks", "runs", "jumps", "throws", "catches", "holds",
         "places", "red", "blue", "green", "small", "large", "wooden", "metal", "slowly", "quickly",
         "carefully", "near", "beside", "on", "under"]


def synthetic_textvid(path: Path, n_records: int, seed: int = 0) -> int:
    """Write Tideos with 10 frames of a frame caption and 2 object captions each; returns #captions."""
    rng = random.Random(seed)

    def caption(lo, hi):
        return " ".join(rng.choices(WORDS, k=rng.randint(lo, hi)))

    qa = {"question": "What happens?", "options": ["a", "b", "c", "d", "e"], "answer": "A"}
    n = 0
    with open(path, "w") as f:
        for i in range(n_records):
            frames = [{"frame": caption(6, 20), "obj1": caption(2, 5), "obj2": caption(2, 5)} for _ in range(10)]
            n += 30
            f.write(json.dumps({"idx": f"b{i}", "frames": frames, "global_video_caption": caption(10, 20),
                                "QAs": [qa]}) + "\n")
    return n


def encoder_for(name: str, device: str, tmp: Path):
    from topa_plugin.features.clip import load_clip

    if name == "toy":
        from topa_plugin.demo.toy import build_toy_clip

        config, weights = build_toy_clip(tmp / "clip")
        return load_clip(str(config), str(weights), device)
    return load_clip(name, None, device)  # random weights: throughput does not depend on them


def bare(encoder, captions: list[str], batch_size: int) -> float:
    """Plain open_clip: tokenize + encode_text per batch, results gathered on the CPU."""
    start = time.perf_counter()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(captions), batch_size):
            tokens = encoder.tokenizer(captions[i:i + batch_size]).to(encoder.device)
            outs.append(encoder.model.encode_text(tokens).float().cpu())
    torch.cat(outs)
    return time.perf_counter() - start


def pipeline(encoder, textvid: Path, out: Path, batch_size: int) -> float:
    from topa_plugin.features.extract import extract_textvid

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    extract_textvid(textvid, out, encoder, batch_size=batch_size, shard_size=100)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32", help="'toy' or an open_clip name (random weights)")
    ap.add_argument("--records", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from topa_plugin.features.extract import textvid_features  # noqa: F401  (import cost outside the timing)
    from topa_plugin.textvid.reader import read_textvid

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        textvid = tmp / "bench.jsonl"
        n_all = synthetic_textvid(textvid, args.records)
        captions = sorted({c for r in read_textvid(textvid) for f in r.captions_per_frame for c in f})
        encoder = encoder_for(args.model, args.device, tmp)
        bare(encoder, captions[: args.batch_size], args.batch_size)  # warm-up
        t_bare, t_pipe = [], []
        for _ in range(args.repeats):
            t_bare.append(bare(encoder, captions, args.batch_size))
            t_pipe.append(pipeline(encoder, textvid, tmp / "out", args.batch_size))
        b, p = min(t_bare), min(t_pipe)
        print(f"model={args.model} device={args.device} batch={args.batch_size} records={args.records} "
              f"captions={n_all} distinct={len(captions)} threads={torch.get_num_threads()}")
        print(f"{'':24}{'seconds':>10}{'captions/s':>14}")
        print(f"{'bare open_clip':24}{b:10.3f}{len(captions) / b:14.1f}")
        print(f"{'topa pipeline':24}{p:10.3f}{len(captions) / p:14.1f}")
        print(f"pipeline / bare = {p / b:.3f}  (overhead {100 * (p / b - 1):+.1f}%, target < +15%)")


if __name__ == "__main__":
    main()
