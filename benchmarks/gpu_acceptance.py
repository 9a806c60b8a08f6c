"""One prepared GPU acceptance run: everything that needs a GPU, in one command, printing one table.

With a Llama-2-13B-shaped random TOPA (bf16 and 4-bit nf4) and a Llama-2-7B shape for training, over a
ViT-L-14-shaped random CLIP, it measures:
  1. load time and peak memory (VRAM on a GPU, RSS growth on CPU) of the 13B TOPA in bf16 and in 4-bit;
  2. ``score_choices`` questions/s at batch 1, 8 and 16 (EgoSchema-length options), bf16 and 4-bit;
  3. ``lmms-eval --model topa`` end to end on EgoSchema-shaped questions over generated 3-minute clips,
     decode workers = the cores: questions/s from two runs (``--limit n`` and ``2n``, so model loading
     cancels out) and the projected time for EgoSchema's 5,031 questions;
  4. a few training steps of the 7B shape under DeepSpeed ZeRO-2 on one device (torchrun, 1 process):
     steps/s and peak memory;
  5. captioning with the release protocol (``caption_video``, MSR-VTT settings) in bf16.
Random weights: the numbers are speed and memory, not accuracy. ``--tiny --device cpu`` runs the same code
on toy shapes (integration_tests/test_gpu_acceptance.py runs it, so the script cannot rot).

    python benchmarks/gpu_acceptance.py                      # one GPU; about 8 minutes on an H100 (estimate)
    python benchmarks/gpu_acceptance.py --tiny --device cpu  # toy shapes, about a minute on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EGOSCHEMA_QUESTIONS = 5031
# name: hidden, layers, heads, intermediate, vocab
SHAPES = {"13b": (5120, 40, 40, 13824, 32000), "7b": (4096, 32, 32, 11008, 32000),
          "tiny-13b": (64, 2, 4, 128, 512), "tiny-7b": (64, 2, 4, 128, 512)}
ACTIONS = ["cuts the onion on the table", "washes the pan in the kitchen", "opens the fridge and takes a cup",
           "pours water into the pot", "picks up the knife", "stirs the food", "walks to the garden",
           "cleans the table with a cloth", "drinks some water", "puts the plate in the sink"]
CAPTION_WORDS = ("how How it is a video of how to cook. Can you describe this video? Generate a dense description "
                 "for the video. Video Caption: The video shows how",) * 40


@contextmanager
def peak_memory(device: str, out: dict):
    """``out["peak_gb"]``: peak growth inside the block over what was held before it: allocated VRAM on CUDA,
    RSS on CPU (Linux clear_refs/VmHWM)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        yield
        torch.cuda.synchronize()
        out["peak_gb"] = (torch.cuda.max_memory_allocated() - before) / 2**30
        return
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    yield
    out["peak_gb"] = (_status_kb("VmHWM") - before) / 2**20


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_llm(out: Path, tokenizer: Path, shape: str, device: str, dtype: torch.dtype) -> Path:
    """A random Llama of ``shape``, initialised on ``device`` (fast for 13B on a GPU) and saved with the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    hidden, layers, heads, inter, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         intermediate_size=inter, vocab_size=vocab, max_position_embeddings=4096, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):  # built in ``dtype`` directly: a 13B in fp32 first would not fit beside its copy
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
    del model
    return out


def build_clip(out: Path, tiny: bool) -> tuple[Path, Path]:
    """(model-config JSON, weights): a toy CLIP, or open_clip's ViT-L-14 architecture with random weights."""
    from topa_plugin.demo import toy

    if tiny:
        return toy.build_toy_clip(out)
    import open_clip
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = out / "ViT-L-14-random.json"
    config.write_text(json.dumps(open_clip.get_model_config("ViT-L-14")))
    weights = out / "ViT-L-14-random.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model("ViT-L-14").state_dict().items()}, str(weights))
    return config, weights


def build_topa(out: Path, base: Path) -> Path:
    """A TOPA plugin directory (random trainables, 10k-row memory) referencing ``base``."""
    from transformers import AutoConfig

    from topa_plugin.configuration import TopaConfig
    from topa_plugin.features.memory import save_memory
    from topa_plugin.modeling import TopaAdapter
    from topa_plugin.utils.save_and_load import save_adapter

    text = AutoConfig.from_pretrained(base)
    config = TopaConfig(text_config=text.to_dict(), base_model_name_or_path=str(base), adapter_len=50, video_bias_init=-3.5)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    adapter = TopaAdapter(config)
    with torch.no_grad():
        for param in adapter.parameters():
            param.normal_(0.0, 0.02)
    save_adapter(adapter, out)
    save_memory(torch.nn.functional.normalize(torch.randn(10_000, config.feature_dim), dim=-1), out / "memory.safetensors")
    return out


def egoschema_question(rng: random.Random) -> tuple[str, list[str]]:
    options = [f"c {', then '.join(rng.sample(ACTIONS, 3))}, to finish the task." for _ in range(5)]
    return "what is the overall goal of c in the video, and how do the actions relate to it", options


def load_rows(plugin: Path, device: str, results: list) -> dict:
    """Stage 1: load the 13B TOPA in bf16 (fp32 on CPU) and in 4-bit; returns the loaded models."""
    from topa_plugin.modeling import TopaForCausalLM

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    models = {}
    for name, quantization in ((str(dtype).removeprefix("torch.").replace("bfloat", "bf").replace("float", "fp"), None),
                               ("4bit", "4bit")):
        memory: dict = {}
        start = time.perf_counter()
        with peak_memory(device, memory):
            models[name] = TopaForCausalLM.from_pretrained(plugin, torch_dtype=dtype, device=device,
                                                           quantization=quantization)
        results.append(("load", name, "seconds", time.perf_counter() - start))
        results.append(("load", name, "peak GB", memory["peak_gb"]))
    return models


def scoring_rows(models: dict, device: str, feature_dim: int, results: list, repeats: int) -> None:
    """Stage 2: score_choices questions/s at batch 1, 8, 16 (one warm-up call each)."""
    rng = random.Random(0)
    for name, model in models.items():
        for batch in (1, 8, 16):
            items = [egoschema_question(rng) for _ in range(batch)]
            videos = [torch.randn(90, feature_dim, device=device) for _ in range(batch)]
            args = (videos, [q for q, _ in items], [o for _, o in items])
            model.score_choices(*args)
            sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                model.score_choices(*args)
            sync(device)
            results.append(("score_choices", f"{name} batch {batch}", "questions/s",
                            batch * repeats / (time.perf_counter() - start)))


def caption_rows(model, device: str, feature_dim: int, results: list) -> None:
    """Stage 5: the release's MSR-VTT captioning protocol, in the model's dtype (bf16 on a GPU)."""
    from topa_plugin.captioning import caption_video

    videos = [torch.randn(30, feature_dim, device=device) for _ in range(3)]
    caption_video(model, videos[0])
    sync(device)
    start = time.perf_counter()
    for video in videos:
        caption_video(model, video)
    sync(device)
    results.append(("captioning", str(model.llm.dtype).removeprefix("torch."), "s/caption",
                    (time.perf_counter() - start) / len(videos)))


def write_egoschema(root: Path, n: int, seconds: int, fps: int, size: int) -> tuple[Path, Path]:
    """n EgoSchema-shaped rows over generated clips of ``seconds``; returns (rows.jsonl, videos folder)."""
    from concurrent.futures import ProcessPoolExecutor

    from topa_plugin.demo.toy import write_toy_video

    rng = random.Random(1)
    rows = []
    with ProcessPoolExecutor(os.cpu_count()) as pool:  # encoding 3-minute clips one by one would take minutes
        list(pool.map(write_toy_video, [root / "videos" / f"clip{i:04d}.mp4" for i in range(n)], [seconds * fps] * n,
                      [size] * n, [fps] * n, range(n)))
    for i in range(n):
        question, options = egoschema_question(rng)
        rows.append({"question_idx": str(i), "video_idx": f"clip{i:04d}", "question": question,
                     "option": [f"{'ABCDE'[j]}. {o}" for j, o in enumerate(options)], "answer": rng.randrange(5)})
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, root / "videos"


def lmms_rows(root: Path, plugin: Path, clip: tuple[Path, Path], device: str, n: int, results: list, args) -> None:
    """Stage 3: the real lmms-eval CLI, --limit n and 2n, decode workers = cores."""
    data, videos = write_egoschema(root / "egoschema", 2 * n, args.clip_seconds, args.clip_fps, args.clip_size)
    run([sys.executable, "-m", "topa_plugin.cli", "lmms-tasks", "--data", str(data), "--videos", str(videos),
         "--out", str(root / "tasks")])
    workers = os.cpu_count() or 1
    walls = {}
    for limit in (n, 2 * n):
        model_args = (f"pretrained={plugin},clip_model={clip[0]},clip_pretrained={clip[1]},device={device},"
                      f"decode_workers={workers}")
        start = time.perf_counter()
        log = run([sys.executable, "-m", "lmms_eval", "--model", "topa", "--model_args", model_args, "--tasks",
             "topa_egoschema_local_mcppl", "--include_path", str(root / "tasks"), "--limit", str(limit),
             "--output_path", str(root / f"lmms_{limit}"), "--batch_size", "8"])
        walls[limit] = time.perf_counter() - start
        if not list((root / f"lmms_{limit}").rglob("*_results.json")):
            raise RuntimeError(f"lmms-eval --limit {limit} wrote no results (it exits 0 on failure):\n{log[-3000:]}")
    rate = n / max(walls[2 * n] - walls[n], 1e-9)
    startup = walls[n] - n / rate
    results.append(("lmms-eval", f"{workers} decode workers", "questions/s", rate))
    results.append(("lmms-eval", f"{2 * n} questions", "wall seconds", walls[2 * n]))
    results.append(("lmms-eval", f"projected {EGOSCHEMA_QUESTIONS}", "minutes", (startup + EGOSCHEMA_QUESTIONS / rate) / 60))


def run(command: list[str], env: dict | None = None) -> str:
    """Run ``command`` with this checkout importable; its stdout + stderr, or RuntimeError naming it."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   **(env or {})}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def training_rows(root: Path, tokenizer: Path, clip: tuple[Path, Path], device: str, results: list, args) -> None:
    """Stage 4: the 7B shape under DeepSpeed ZeRO-2 on one device, through torchrun and the training entry point."""
    from topa_plugin.textvid import sample_path

    shape = "tiny-7b" if args.tiny else "7b"
    llm = build_llm(root / "llm7b", tokenizer, shape, device, torch.bfloat16 if device.startswith("cuda") else torch.float32)
    features = root / "textvid_features"
    run([sys.executable, "-m", "topa_plugin.cli", "features", "textvid", "--textvid", str(sample_path()), "--out",
         str(features), "--clip-model", str(clip[0]), "--clip-pretrained", str(clip[1]), "--device", device])
    flags = ["--model_name_or_path", str(llm), "--data_path", str(sample_path()), "--feature_folder", str(features),
             "--output_dir", str(root / "train_out"), "--per_device_train_batch_size", "4", "--max_steps",
             str(args.train_steps), "--save_strategy", "no", "--max_seq_len", "400", "--report_to", "none",
             "--deepspeed", str(ROOT / "configs" / "zero2.json"), "--logging_steps", "1", "--disable_tqdm", "True",
             "--adapter_len", "50" if not args.tiny else "4", "--bits", str(args.train_bits)]
    flags += ["--bf16", "True"] if device.startswith("cuda") else ["--use_cpu", "True"]
    out = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()),
               __file__, "--train-probe", *flags], env={"DS_ACCELERATOR": "cpu"} if device == "cpu" else None)
    probe = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith('{"steps_per_s"')))
    label = f"7B shape, ZeRO-2, bits {args.train_bits}" if not args.tiny else f"tiny, ZeRO-2, bits {args.train_bits}"
    results.append(("training", label, "steps/s", probe["steps_per_s"]))
    results.append(("training", label, "peak GB", probe["peak_gb"]))


def train_probe(flags: list[str]) -> None:
    """Child process (under torchrun): train, then print {"steps_per_s", "peak_gb"} on rank 0."""
    import transformers

    from topa_plugin.training.preflight import preflight
    from topa_plugin.training.train import run as train

    class Clock(transformers.TrainerCallback):
        times: list[float] = []

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter())

    arguments = preflight(flags, "gpu_acceptance train probe")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    memory: dict = {}
    with peak_memory(device, memory):
        train(*arguments, callbacks=[Clock()])
    steps = Clock.times
    rate = (len(steps) - 1) / (steps[-1] - steps[0]) if len(steps) > 1 else float("nan")  # first step warms up
    print(json.dumps({"steps_per_s": rate, "peak_gb": memory["peak_gb"]}))


def print_table(results: list, device: str) -> None:
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"\nGPU acceptance on {name} ({device})")
    print(f"{'stage':<14} {'setting':<32} {'metric':<14} {'value':>10}")
    for stage, setting, metric, value in results:
        print(f"{stage:<14} {setting:<32} {metric:<14} {value:>10.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy shapes (the test suite runs this on CPU)")
    parser.add_argument("--workdir", help="where the models, clips and outputs go (default: a temporary folder)")
    parser.add_argument("--questions", type=int, default=None, help="lmms-eval --limit n, then 2n (default 8; tiny 2)")
    parser.add_argument("--clip-seconds", type=int, default=180)
    parser.add_argument("--clip-fps", type=int, default=8, help="generated clips' frame rate (decoding cost grows with it)")
    parser.add_argument("--clip-size", type=int, default=360)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--train-bits", type=int, default=16, choices=(16, 8, 4))
    parser.add_argument("--repeats", type=int, default=None, help="timed score_choices calls per batch size")
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--train-probe":
        train_probe(sys.argv[2:])
        return 0
    args = parser.parse_args(argv)
    if args.tiny:
        args.clip_seconds, args.clip_fps, args.clip_size = min(args.clip_seconds, 6), min(args.clip_fps, 4), min(args.clip_size, 64)
    with tempfile.TemporaryDirectory() as tmp:
        acceptance(Path(args.workdir or tmp), args)
    return 0


def acceptance(root: Path, args) -> None:
    from topa_plugin.demo import toy

    device, results = args.device, []
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = toy.train_toy_tokenizer(root / "tokenizer", extra_text=tuple(ACTIONS) + CAPTION_WORDS).parent
    clip = build_clip(root / "clip", args.tiny)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    base = build_llm(root / "llm13b", tokenizer, "tiny-13b" if args.tiny else "13b", device, dtype)
    plugin = build_topa(root / "topa13b", base)
    models = load_rows(plugin, device, results)
    feature_dim = next(iter(models.values())).config.feature_dim
    scoring_rows(models, device, feature_dim, results, args.repeats or (1 if args.tiny else 3))
    caption_rows(next(iter(models.values())), device, feature_dim, results)
    del models
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    lmms_rows(root, plugin, clip, device, args.questions or (2 if args.tiny else 8), results, args)
    training_rows(root, tokenizer, clip, device, results, args)
    print_table(results, device)


if __name__ == "__main__":
    sys.exit(main())
