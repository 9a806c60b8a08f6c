"""``topa serve`` as a real subprocess on a free loopback port, with toy models and generated videos, for the
integration tests and ``benchmarks/bench_serve.py``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
UPLOADS_LINE = re.compile(r"uploads go to (\S+) ")


def free_port(host: str = HOST) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def write_truncated_video(path: str | Path, n_frames: int = 48, keep: float = 1 / 3) -> Path:
    """An mp4 whose header (``moov`` first: faststart) is whole but whose frame data is cut short."""
    import av
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8, options={"threads": "1"})
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(n_frames):
            frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@dataclass
class ServeProcess:
    """A running ``topa serve``; ``stop`` sends SIGTERM (as a service manager does) and waits."""

    process: subprocess.Popen
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def upload_dir(self) -> Path:
        found = UPLOADS_LINE.search(self.log_text())
        assert found, self.log_text()
        return Path(found.group(1))

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_serve(checkpoint: Path, clip: tuple[Path, Path], log: Path, *args: str, port: int | None = None,
                ready_timeout: float = 180) -> ServeProcess:
    """Start ``topa serve`` on ``port`` (a free one by default) and wait until its page answers."""
    port = port or free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "topa_plugin.cli", "serve", "--checkpoint", str(checkpoint),
               "--clip-model", str(clip[0]), "--clip-pretrained", str(clip[1]), "--device", "cpu",
               "--port", str(port), *args]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    served = ServeProcess(process, f"http://{HOST}:{port}/", log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"topa serve exited with {process.returncode}:\n{served.log_text()}")
        try:
            with urllib.request.urlopen(served.url, timeout=5) as response:
                if response.status == 200:
                    return served
        except OSError:
            time.sleep(0.5)
    served.stop()
    raise RuntimeError(f"topa serve did not answer within {ready_timeout} s:\n{served.log_text()}")
