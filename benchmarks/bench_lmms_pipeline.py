"""Where an lmms-eval question's time goes: decode / CLIP / projection / LLM, on CPU with tiny models.

Times each stage of the ``topa`` model's pipeline per question (the same functions the model
calls), then the model class end to end with a cold and a warm feature cache, side by side.

    python benchmarks/bench_lmms_pipeline.py [--questions 8] [--frames 96] [--size 128] [--memory-rows 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.lmms_fixtures import MAX_FEATS, ROWS, build_topa_checkpoint


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def build(root: Path, args):
    from topa_plugin.demo import toy

    toy.train_toy_tokenizer(root / "tokenizer")
    llama = toy.build_toy_llama(root / "llama", root / "tokenizer")
    clip_config, clip_weights = toy.build_toy_clip(root / "clip")
    checkpoint = build_topa_checkpoint(root / "checkpoint", llama, memory_rows=args.memory_rows)
    videos = [toy.write_toy_video(root / "videos" / f"v{i}.mp4", n_frames=args.frames, size=args.size, seed=i)
              for i in range(args.questions)]
    questions = [ROWS[i % len(ROWS)] for i in range(args.questions)]
    return checkpoint, clip_config, clip_weights, videos, questions


def stage_times(lm, videos, questions) -> dict[str, list[float]]:
    """Per question: each stage run alone, in pipeline order."""
    from topa_plugin.features.transforms import l2_normalize
    from topa_plugin.features.video import read_frames

    model, encoder = lm.model, lm.features.encoder
    times = {"decode": [], "clip": [], "projection": [], "llm": []}
    for video, (question, options, _) in zip(videos, questions):
        frames, t = timed(read_frames, video, lm.features.num_frames)
        times["decode"].append(t)
        raw, t = timed(encoder.encode_images, frames)
        features = l2_normalize(raw)
        times["clip"].append(t)
        prepared, t = timed(model.prepare_video, features)
        times["projection"].append(t)
        _, t = timed(model.score_choices, prepared, question, options, use_memory=False)
        times["llm"].append(t)
    return times


def model_class_time(lm, videos, questions) -> float:
    """Seconds per question through ``Topa.generate_until`` (feature cache as it stands)."""
    from lmms_eval.api.instance import Instance

    from topa_plugin.lmms.task_utils import doc_to_visual

    docs = [{"video_path": str(v), "question": q, "option": [f"{'ABCDE'[i]}. {o}" for i, o in enumerate(opts)]}
            for v, (q, opts, _) in zip(videos, questions)]
    lm.task_dict = {"bench": {"test": docs}}
    requests = [Instance("generate_until", ("", {}, doc_to_visual, i, "bench", "test"), 0,
                         metadata={"task": "bench", "doc_id": i, "repeats": 1}) for i in range(len(docs))]
    _, t = timed(lm.generate_until, requests)
    return t / len(docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--frames", type=int, default=96, help="frames per toy video")
    parser.add_argument("--size", type=int, default=128, help="toy video width = height")
    parser.add_argument("--memory-rows", type=int, default=20000, help="memory bank rows (the release uses 1M)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from topa_plugin.lmms.model import Topa

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint, clip_config, clip_weights, videos, questions = build(root, args)
        lm = Topa(pretrained=str(checkpoint), clip_model=str(clip_config), clip_pretrained=str(clip_weights),
                  device="cpu", feature_cache=str(root / "cache"))
        stage_times(lm, videos[:1], questions[:1])  # warm-up: first calls pay one-off setup
        stages = stage_times(lm, videos, questions)
        cold = model_class_time(lm, videos, questions)
        warm = model_class_time(lm, videos, questions)

    per_question = {name: statistics.mean(values) * 1000 for name, values in stages.items()}
    total = sum(per_question.values())
    print(f"TOPA lmms-eval pipeline, CPU ({args.threads} thread), {args.questions} questions, "
          f"{args.frames}-frame {args.size}x{args.size} mp4 -> {MAX_FEATS} frames, memory {args.memory_rows} rows, "
          "toy CLIP (768-d) + toy Llama (64-d, 4 layers)")
    print(f"{'stage':<26}{'ms/question':>12}{'share':>8}")
    for name, ms in per_question.items():
        print(f"{name:<26}{ms:>12.2f}{ms / total:>8.1%}")
    print(f"{'sum of stages':<26}{total:>12.2f}")
    print(f"{'model class, cold cache':<26}{cold * 1000:>12.2f}")
    print(f"{'model class, warm cache':<26}{warm * 1000:>12.2f}   cold/warm = {cold / warm:.2f}x")


if __name__ == "__main__":
    main()
