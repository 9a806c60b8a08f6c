"""Zero-shot multiple-choice scoring: TopaForCausalLM.score_choices vs the release protocol.

The release scores a question by padding each of its 5 option sequences to 600 tokens and
running 5 full forwards at batch 1. ``score_choices`` runs the shared prefix once and the 5
short suffixes from its KV cache in one batch. Both run on the same random backbone with
random TOPA trainables; the script prints time per question, the speed-up, the largest score
difference (release scores taken over the same answer tokens) and prediction agreement, and
peak memory of each protocol (RSS growth on CPU, max allocated on GPU).

    python benchmarks/bench_scoring.py                      # CPU, 8 layers, d=1024
    python benchmarks/bench_scoring.py --device cuda --preset llama2-7b --dtype bf16
"""

from __future__ import annotations

import argparse
import functools
import random
import tempfile
import threading
import time
from pathlib import Path

import torch

PRESETS = {
    # name: hidden, layers, heads, kv heads, intermediate
    "mid": (1024, 8, 16, 16, 2816),
    "llama2-7b": (4096, 32, 32, 32, 11008),
    "llama3-8b": (4096, 32, 32, 8, 14336),
}
VOCAB = 32000
SUBJECTS = ["the camera wearer", "the person", "the man", "the woman", "c"]
ACTIONS = [
    "cuts the onion on the table", "washes the pan in the kitchen", "opens the fridge and takes a cup",
    "pours water into the pot", "picks up the knife", "stirs the food in the pot", "walks to the garden",
    "cleans the table with a cloth", "drinks some water from the cup", "puts the plate in the sink",
]


def egoschema_like(rng: random.Random) -> tuple[str, list[str]]:
    """A question with five long options, about as many tokens as an EgoSchema item."""
    subject = rng.choice(SUBJECTS)
    question = f"what is the main goal of {subject} throughout the video, and how do the actions relate to it"
    options = []
    for _ in range(5):
        steps = rng.sample(ACTIONS, 3)
        options.append(f"{subject} {steps[0]}, then {steps[1]}, and finally {steps[2]} to finish the task.")
    return question, options


def build_model(preset: str, device: str, dtype: torch.dtype, tokenizer_dir: Path, memory_rows: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from topa_plugin.configuration import TopaConfig
    from topa_plugin.modeling import TopaForCausalLM
    from topa_plugin.processing import TopaProcessor

    hidden, layers, heads, kv_heads, inter = PRESETS[preset]
    text_config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        llm = AutoModelForCausalLM.from_config(text_config, dtype=dtype)
        with torch.no_grad():
            llm.model.embed_tokens.weight.normal_(0.0, 1.0)
    model = TopaForCausalLM(TopaConfig(text_config=llm.config.to_dict()), llm=llm)
    with torch.no_grad():
        model.adapter.gate1.normal_(0.0, 0.5)
        model.adapter.gate2.uniform_(-4.0, 1.0)
    model.memory = torch.nn.functional.normalize(torch.randn(memory_rows, 768), dim=-1)
    model.to(device).eval()
    model.processor = TopaProcessor(AutoTokenizer.from_pretrained(tokenizer_dir))
    return model


@torch.no_grad()
def release_protocol(model, features, question, options, pad_to: int) -> torch.Tensor:
    """5 forwards at batch 1 of 600-token sequences; scores over the same answer tokens as score_choices."""
    device = model.llm.device
    prompts = [model.processor.encode_multiple_choice(question, options, answer=i) for i in range(len(options))]
    sequences = [p.input_ids for p in prompts]
    first = next(i for i, column in enumerate(zip(*sequences)) if len(set(column)) > 1)
    video = model.prepare_video(features)[None]
    scores = []
    for seq in sequences:
        if len(seq) > pad_to:
            raise ValueError(f"prompt of {len(seq)} tokens exceeds --pad-to {pad_to}")
        ids = torch.zeros(1, pad_to, dtype=torch.long, device=device)  # the release pads with id 0
        ids[0, : len(seq)] = torch.tensor(seq, device=device)
        logits = model(ids, video, prompts[0].video_start).logits[0].float()
        logp = torch.log_softmax(logits[first - 1 : len(seq) - 1], dim=-1)
        targets = torch.tensor(seq[first:], device=device)
        scores.append(-logp.gather(-1, targets[:, None]).mean())
    return torch.stack(scores).cpu()


class PeakMemory:
    """Peak memory growth while the block runs: CUDA max allocated, or sampled process RSS on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            import psutil

            _return_freed_memory()
            self.process = psutil.Process()
            self.base = self.process.memory_info().rss
            self.peak_rss = self.base
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = self.peak_rss - self.base


def _return_freed_memory() -> None:
    """glibc keeps freed heap pages; trimming makes RSS track live memory between measurements."""
    import ctypes
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    if libc_name and hasattr(ctypes.CDLL(libc_name), "malloc_trim"):
        ctypes.CDLL(libc_name).malloc_trim(0)


def timed(fn, device: str):
    """(result, wall seconds, process CPU seconds); CPU time is steadier on a shared machine."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start, time.process_time() - cpu_start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mid")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--pad-to", type=int, default=600)
    parser.add_argument("--memory-rows", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    from topa_plugin.demo.toy import train_toy_tokenizer

    rng = random.Random(0)
    items = [egoschema_like(rng) for _ in range(args.questions + 1)]
    corpus = tuple(q + "\n" + "\n".join(o) for q, o in items) * 4
    with tempfile.TemporaryDirectory() as tmp:
        train_toy_tokenizer(tmp, extra_text=corpus, vocab_size=1000)
        model = build_model(args.preset, args.device, dtype, Path(tmp), args.memory_rows)
    generator = torch.Generator().manual_seed(0)
    videos = [torch.randn(rng.randint(5, 40), 768, generator=generator) for _ in items]
    lengths = [len(model.processor.encode_multiple_choice(q, o, 0).input_ids) for q, o in items]
    n_params = sum(p.numel() for p in model.llm.parameters()) / 1e6
    if args.device.startswith("cuda"):
        print(f"gpu: {torch.cuda.get_device_name()}")
    print(f"device={args.device} preset={args.preset} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"llm={n_params:.0f}M params, adapter={sum(p.numel() for p in model.trainable_parameters()) / 1e6:.2f}M")
    print(f"prompt length {min(lengths)}-{max(lengths)} tokens, release pads to {args.pad_to}; {args.questions} questions x 5 options")

    # warm-up (kernels, allocator) on an extra question
    model.score_choices(videos[0], *items[0])
    release_protocol(model, videos[0], *items[0], args.pad_to)

    # Alternate the two protocols question by question so that load changes hit both alike.
    protocols = {
        "ours": lambda video, q, o: model.score_choices(video, q, o),
        "release": lambda video, q, o: release_protocol(model, video, q, o, args.pad_to),
    }
    scores = {name: [] for name in protocols}
    seconds = dict.fromkeys(protocols, 0.0)
    cpu_seconds = dict.fromkeys(protocols, 0.0)
    peak = dict.fromkeys(protocols, 0)
    for video, (q, o) in zip(videos[1:], items[1:]):
        for name, fn in protocols.items():
            with PeakMemory(args.device) as memory:
                result, elapsed, cpu = timed(functools.partial(fn, video, q, o), args.device)
            scores[name].append(result)
            seconds[name] += elapsed
            cpu_seconds[name] += cpu
            peak[name] = max(peak[name], memory.peak)
    ours, theirs = torch.stack(scores["ours"]), torch.stack(scores["release"])
    n = args.questions
    same = int((ours.argmin(-1) == theirs.argmin(-1)).sum())
    for name, label in (("ours", "score_choices   "), ("release", "release protocol")):
        print(
            f"{label} : {1000 * seconds[name] / n:9.1f} ms/question (process CPU {1000 * cpu_seconds[name] / n:9.1f} ms)"
            f"   peak memory +{peak[name] / 2**20:8.1f} MiB"
        )
    print(f"speed-up         : {seconds['release'] / seconds['ours']:9.1f}x wall, "
          f"{cpu_seconds['release'] / cpu_seconds['ours']:.1f}x process CPU time")
    print(f"max |score diff| : {(ours - theirs).abs().max().item():.2e}   same argmin: {same}/{n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
