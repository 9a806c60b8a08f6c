"""``topa serve`` under load, with the toy models on CPU: the server's memory over many sequential requests
(flat, or leaking?), latency per request through gradio_client beside ``Asker.ask`` plus the explanation page
on the same inputs in this process (the cost of serving), and 16 concurrent clients against the same requests one by one.

The server is a real ``topa serve`` subprocess on a free loopback port; requests cycle over ``--videos``
distinct generated mp4s (each a fresh upload). RSS is read from /proc after every request; the peak is the
kernel's high-water mark (VmHWM). Target: RSS flat after warm-up (growth over the last half of the requests
under 5% of the RSS), every answer equal to ``Asker.ask``'s.

    python benchmarks/bench_serve.py                      # 200 requests, 8 videos
    python benchmarks/bench_serve.py --requests 50 --concurrent 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "What is the main activity c performs throughout the video?"
OPTIONS = ["c cooks a meal", "c cleans the kitchen", "c repairs a bicycle", "c paints a wall", "c plays with a dog"]


def build_fixture(root: Path, n_videos: int) -> tuple[Path, tuple[Path, Path], list[Path]]:
    """Toy checkpoint, toy CLIP and ``n_videos`` distinct mp4s under ``root``."""
    from tests.helpers.lmms_fixtures import build_topa_checkpoint
    from topa_plugin.demo import toy

    toy.train_toy_tokenizer(root / "tokenizer")
    llama = toy.build_toy_llama(root / "llama", root / "tokenizer")
    checkpoint = build_topa_checkpoint(root / "checkpoint", llama)
    clip = toy.build_toy_clip(root / "clip")
    videos = [toy.write_toy_video(root / "videos" / f"v{i}.mp4", n_frames=24 + i, seed=200 + i) for i in range(n_videos)]
    return checkpoint, clip, videos


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB, from /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def direct_answers(checkpoint, clip, videos) -> tuple[dict, float, float]:
    """Asker.ask and the explanation page in this process for every video, as the server does per request:
    ({video: answer}, median seconds per ask, median seconds per explanation)."""
    from topa_plugin.ask import Asker
    from topa_plugin.pages.explanation import explanation_html

    asker = Asker.from_pretrained(checkpoint, clip_model=str(clip[0]), clip_pretrained=str(clip[1]), device="cpu")
    explanation_html(asker.ask(videos[0], QUESTION, OPTIONS))  # warm-up
    answers, asks, explains = {}, [], []
    for video in videos * 3:
        start = time.perf_counter()
        answer = asker.ask(video, QUESTION, OPTIONS)
        middle = time.perf_counter()
        explanation_html(answer)
        asks.append(middle - start)
        explains.append(time.perf_counter() - middle)
        answers[video] = answer.answer
    return answers, statistics.median(asks), statistics.median(explains)


def sequential(client, videos, n: int, expected: dict, pid: int) -> tuple[list[float], list[float], float]:
    """``n`` requests one after another: (latencies s, RSS MB after each, peak RSS MB)."""
    from gradio_client import handle_file

    latencies, rss = [], []
    for i in range(n):
        video = videos[i % len(videos)]
        start = time.perf_counter()
        answer = client.predict(handle_file(str(video)), QUESTION, "\n".join(OPTIONS), api_name="/answer")[0]
        latencies.append(time.perf_counter() - start)
        assert answer == expected[video], (video, answer, expected[video])
        rss.append(rss_mb(pid)[0])
    return latencies, rss, rss_mb(pid)[1]


def concurrent(url: str, videos, n: int, expected: dict) -> float:
    """Wall seconds for ``n`` clients asking at once (one request each), every answer checked."""
    from gradio_client import Client, handle_file

    clients = [Client(url, verbose=False) for _ in range(n)]

    def one(i):
        video = videos[i % len(videos)]
        answer = clients[i].predict(handle_file(str(video)), QUESTION, "\n".join(OPTIONS), api_name="/answer")[0]
        assert answer == expected[video], (video, answer)

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    for client in clients:
        client.close()
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--videos", type=int, default=8, help="distinct videos the requests cycle over")
    parser.add_argument("--warmup", type=int, default=10, help="requests before the RSS start is read")
    parser.add_argument("--concurrent", type=int, default=16)
    args = parser.parse_args()

    from gradio_client import Client

    from tests.helpers.serve_process import start_serve

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        checkpoint, clip, videos = build_fixture(root, args.videos)
        expected, ask_s, explain_s = direct_answers(checkpoint, clip, videos)
        served = start_serve(checkpoint, clip, root / "serve.log")
        try:
            pid = served.process.pid
            client = Client(served.url, verbose=False)
            loaded_rss = rss_mb(pid)[0]
            sequential(client, videos, args.warmup, expected, pid)
            start_rss = rss_mb(pid)[0]
            latencies, rss, peak = sequential(client, videos, args.requests, expected, pid)
            one_by_one = sum(latencies[: args.concurrent])
            at_once = concurrent(served.url, videos, args.concurrent, expected)
            uploads = sum(1 for p in served.upload_dir().rglob("*") if p.is_file())
            client.close()
        finally:
            served.stop()

    half = rss[len(rss) // 2:]
    growth = half[-1] - half[0]
    median = statistics.median(latencies)
    p95 = sorted(latencies)[int(0.95 * (len(latencies) - 1))]
    report = {
        "requests": args.requests, "videos": args.videos,
        "rss_mb": {"after_load": round(loaded_rss, 1), "start": round(start_rss, 1), "end": round(rss[-1], 1),
                   "peak": round(peak, 1), "growth_last_half": round(growth, 1),
                   "by_quarter": [round(rss[max(0, len(rss) * q // 4 - 1)], 1) for q in (1, 2, 3, 4)]},
        "flat": abs(growth) < 0.05 * half[0],
        "latency_s": {"median": round(median, 4), "p95": round(p95, 4), "max": round(max(latencies), 4)},
        "asker_ask_median_s": round(ask_s, 4), "explanation_median_s": round(explain_s, 4),
        "serving_overhead_ratio": round(median / (ask_s + explain_s), 2),
        f"{args.concurrent}_sequential_s": round(one_by_one, 2), f"{args.concurrent}_concurrent_s": round(at_once, 2),
        "concurrent_speedup": round(one_by_one / at_once, 2), "upload_files_left": uploads,
    }
    print(f"RSS MB: after load {loaded_rss:.1f}, after {args.warmup} warm-up requests {start_rss:.1f}, "
          f"after {args.requests} more {rss[-1]:.1f}, peak {peak:.1f}; last-half growth {growth:+.1f} MB "
          f"({'flat' if report['flat'] else 'GROWING'})")
    print(f"latency per request: median {median * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms; in this process Asker.ask "
          f"{ask_s * 1000:.0f} ms + explanation page {explain_s * 1000:.0f} ms -> serving (upload, queue, Gradio) costs "
          f"{median / (ask_s + explain_s):.2f}x that")
    print(f"{args.concurrent} requests: one by one {one_by_one:.2f} s, {args.concurrent} clients at once {at_once:.2f} s "
          f"({one_by_one / at_once:.2f}x); upload files on disk: {uploads}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
