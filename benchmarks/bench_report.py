"""``topa report`` at EgoSchema's size: 5,031 synthetic questions in lmms-eval's layout.

Writes a run of 5,031 EgoSchema-shaped questions (results and ``--log_samples`` files by lmms-eval's own
tracker, with a request log holding every option's score), times ``topa report`` end to end (the CLI in a
fresh process), prints the page's size, and opens it in headless Chromium: the time from navigation to the
first cards on screen (the page's ``topa-first-cards`` performance mark) and to the load event, median of
``--opens``. A second, small run with real mp4 videos gives the page weight that thumbnails add per question.

    python benchmarks/bench_report.py [--questions 5031] [--opens 5] [--thumbnail-videos 40]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.browser import file_url, open_browser  # noqa: E402
from tests.helpers.lmms_runs import GENERATE, LETTERS, egoschema_docs, write_lmms_run, write_request_log  # noqa: E402


def write_run(root: Path, n: int, videos: Path | None = None) -> tuple[Path, Path]:
    rng = random.Random(0)
    docs = egoschema_docs(n, seed=0, videos=videos)
    losses = [[round(rng.uniform(0.5, 3.0), 4) for _ in range(5)] for _ in docs]
    replies = [LETTERS[min(range(5), key=row.__getitem__)] for row in losses]
    write_lmms_run(root / "run", {"egoschema": (GENERATE, docs, replies)})
    return root / "run", write_request_log(root / "requests.jsonl", "egoschema", docs, losses)


def report(run: Path, log: Path, page: Path, thumbnails: int) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "topa_plugin.cli", "report", str(run), "--request-log", str(log),
                           "--out", str(page), "--thumbnails", str(thumbnails)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return time.perf_counter() - start


def open_times(page: Path, opens: int) -> tuple[float, float, int]:
    """Median ms to the first cards and to the load event, and how many cards the first screen holds."""
    first, loaded, cards = [], [], 0
    driver = open_browser(width=1280, height=1000)
    try:
        for _ in range(opens):
            driver.get("about:blank")
            driver.get(file_url(page))
            first.append(driver.execute_script("return performance.getEntriesByName('topa-first-cards')[0].startTime"))
            loaded.append(driver.execute_script("const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd"))
            cards = driver.execute_script("return document.querySelectorAll('#cards .qcard').length")
    finally:
        driver.quit()
    return statistics.median(first), statistics.median(loaded), cards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=5031)
    parser.add_argument("--opens", type=int, default=5)
    parser.add_argument("--thumbnail-videos", type=int, default=40, help="questions with real mp4s for the thumbnail weight")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        run, log = write_run(root / "big", args.questions)
        print(f"{args.questions} synthetic EgoSchema questions written in {time.perf_counter() - start:.1f}s")
        page = root / "report.html"
        seconds = report(run, log, page, thumbnails=0)
        first, loaded, cards = open_times(page, args.opens)
        size = page.stat().st_size
        print(f"topa report (--thumbnails 0): {seconds:.2f}s; page {size / 2**20:.2f} MiB ({size / args.questions:.0f} B/question)")
        print(f"headless Chromium, median of {args.opens}: first {cards} cards at {first:.0f} ms, load event at {loaded:.0f} ms")

        from topa_plugin.demo.toy import write_toy_video

        n = args.thumbnail_videos
        for i in range(n):
            write_toy_video(root / "videos" / f"video-{i:05d}.mp4", n_frames=48, size=224, seed=i)
        small_run, small_log = write_run(root / "small", n, videos=root / "videos")
        sizes = {}
        for frames in (0, 4):
            small_page = root / f"small-{frames}.html"
            report(small_run, small_log, small_page, thumbnails=frames)
            sizes[frames] = small_page.stat().st_size
        print(f"thumbnails (--thumbnails 4, 224px videos): +{(sizes[4] - sizes[0]) / n / 1024:.1f} KiB per question "
              f"({n} questions with videos)")


if __name__ == "__main__":
    main()
