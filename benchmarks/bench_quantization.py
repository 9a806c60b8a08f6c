"""Quantized frozen LLMs (8-bit, 4-bit nf4/fp4) against full precision, side by side on the same questions and features.

Per precision, on one tiny random TOPA (random Llama with fan-in weights, random adapter and gates):
  - exactness of the integration: the plugin's quantized TOPA vs transformers' own quantized LLM (the same
    ``BitsAndBytesConfig``) with the same adapter attached (target: max score difference <= 1e-4);
  - closeness to fp32: argmin agreement on questions whose two best fp32 options differ by >= ``--margin`` nats,
    max and mean score difference;
  - memory: bytes of the LLM's linear-layer weights (scales included) vs the same layers in bf16, and the
    whole LLM's footprint;
  - peak RSS while loading (each load in a fresh process) and time per question.
Then the agreement of 8-bit and 4-bit with fp32 as the model gets wider (tiny random models exaggerate 4-bit
error; real LLMs lose little under nf4). Targets are printed beside the numbers:
  8-bit agrees with full precision on >= 95% of questions with margins; 4-bit linear weights <= 0.35x bf16.

    python benchmarks/bench_quantization.py                        # CPU, about 5 minutes on 2 cores
    python benchmarks/bench_quantization.py --width 256 --widths 128,256 --questions 20   # quicker
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROWS = ("fp32", "8bit", "4bit-nf4", "4bit-fp4")
TARGET_AGREEMENT_8BIT = 0.95
TARGET_MEMORY_4BIT = 0.35
EXACTNESS = 1e-4
FEATURE_DIM = 64
SUBJECTS = ["the camera wearer", "the person", "the man", "the woman", "c"]
ACTIONS = ["cuts the onion", "washes the pan", "opens the fridge", "pours water into the pot", "picks up the knife",
           "stirs the food", "walks to the garden", "cleans the table", "drinks some water", "puts the plate away"]


def settings(row: str):
    from topa_plugin.quantization import QuantizationSettings

    if row == "fp32":
        return QuantizationSettings(None)
    if row == "8bit":
        return QuantizationSettings("8bit")
    return QuantizationSettings("4bit", quant_type=row.split("-")[1])


def build_checkpoint(root: Path, tokenizer: Path, width: int, seed: int = 0) -> Path:
    """A self-contained TOPA plugin directory over a 4-layer random Llama of ``width``, random trainables."""
    from transformers import AutoModelForCausalLM

    from topa_plugin.configuration import TopaConfig
    from topa_plugin.demo import toy
    from topa_plugin.modeling import TopaForCausalLM
    from topa_plugin.processing import TopaProcessor

    base = toy.build_toy_llama(root / f"llama{width}", tokenizer, hidden_size=width, layers=4, heads=max(width // 32, 2),
                               seed=seed, fan_in_init=True)
    llm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = TopaForCausalLM(TopaConfig(text_config=llm.config.to_dict(), feature_dim=FEATURE_DIM, adapter_len=4), llm=llm)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.adapter.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    model.processor = TopaProcessor.from_pretrained(base, max_feats=model.config.max_feats)
    out = root / f"topa{width}"
    model.save_pretrained(out, save_base=True)
    return out


def questions(n: int, seed: int = 0) -> list[tuple[torch.Tensor, str, list[str]]]:
    """The same (features, question, options) for every row."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        subject = rng.choice(SUBJECTS)
        options = [f"{subject} {', then '.join(rng.sample(ACTIONS, 2))}" for _ in range(5)]
        out.append((torch.randn(8, FEATURE_DIM, generator=generator), f"what does {subject} do in the video", options))
    return out


def score_all(model, items) -> tuple[torch.Tensor, float]:
    """Scores [N, 5] and seconds per question."""
    start = time.perf_counter()
    scores = torch.stack([model.score_choices(f, q, o, use_memory=False) for f, q, o in items])
    return scores, (time.perf_counter() - start) / len(items)


def transformers_twin(model, checkpoint: Path, row: str):
    """transformers' own quantized LLM (the same BitsAndBytesConfig, loaded without the plugin) + the same adapter."""
    from transformers import AutoModelForCausalLM

    from topa_plugin.modeling import TopaForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(checkpoint / "base", dtype=torch.float32, device_map={"": "cpu"},
                                               quantization_config=settings(row).bnb_config("cpu"))
    twin = TopaForCausalLM(model.config, llm=llm)
    twin.adapter.load_state_dict(model.adapter.state_dict())
    twin.processor = model.processor
    return twin.eval()


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def probe_load(checkpoint: str, row: str) -> None:
    """Child process: load once, print {"load_s", "rss_mb"}: peak RSS while loading above the RSS before it
    (Linux: the peak is reset through /proc/self/clear_refs after the imports, bitsandbytes' included)."""
    import bitsandbytes  # noqa: F401  (its library is not the model's memory)
    import transformers.integrations.bitsandbytes  # noqa: F401

    from topa_plugin.modeling import TopaForCausalLM

    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    TopaForCausalLM.from_pretrained(checkpoint, quantization=settings(row))
    seconds = time.perf_counter() - start
    print(json.dumps({"load_s": seconds, "rss_mb": _status_mb("VmHWM") - before}))


def load_in_child(checkpoint: Path, row: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--probe-load", str(checkpoint), "--row", row],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def agreement(scores: torch.Tensor, reference: torch.Tensor, margin: float) -> tuple[int, int]:
    """(agreeing, counted) over questions whose two best reference options differ by >= margin."""
    best = reference.sort(-1).values
    kept = best[:, 1] - best[:, 0] >= margin
    return int((scores.argmin(-1) == reference.argmin(-1))[kept].sum()), int(kept.sum())


def precision_table(checkpoint: Path, items, margin: float) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from topa_plugin.modeling import TopaForCausalLM
    from topa_plugin.quantization import linear_weight_bytes

    bf16_linear = linear_weight_bytes(AutoModelForCausalLM.from_pretrained(checkpoint / "base", dtype=torch.bfloat16))
    rows, reference = [], None
    for row in ROWS:
        model = TopaForCausalLM.from_pretrained(checkpoint, quantization=settings(row))
        scores, per_question = score_all(model, items)
        reference = scores if reference is None else reference
        diff = (scores - reference).abs()
        agree, counted = agreement(scores, reference, margin)
        exact = None
        if row != "fp32":
            exact = float((score_all(transformers_twin(model, checkpoint, row), items)[0] - scores).abs().max())
        rows.append({"row": row, "agree": agree, "counted": counted, "max_diff": float(diff.max()),
                     "mean_diff": float(diff.mean()), "linear_mb": linear_weight_bytes(model.llm) / 2**20,
                     "linear_vs_bf16": linear_weight_bytes(model.llm) / bf16_linear,
                     "llm_mb": model.llm.get_memory_footprint() / 2**20, "s_per_q": per_question, "exact": exact,
                     **load_in_child(checkpoint, row)})
    return rows


def width_sweep(root: Path, tokenizer: Path, widths: list[int], items, margin: float) -> list[dict]:
    from topa_plugin.modeling import TopaForCausalLM

    out = []
    for width in widths:
        checkpoint = build_checkpoint(root, tokenizer, width)
        reference = score_all(TopaForCausalLM.from_pretrained(checkpoint), items)[0]
        entry = {"width": width}
        for row in ("8bit", "4bit-nf4"):
            scores = score_all(TopaForCausalLM.from_pretrained(checkpoint, quantization=settings(row)), items)[0]
            entry[row] = agreement(scores, reference, margin)
            entry[f"{row}_max"] = float((scores - reference).abs().max())
        out.append(entry)
    return out


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def report(width: int, rows: list[dict], sweep: list[dict], margin: float) -> None:
    print(f"\nPrecisions on one 4-layer random Llama, d={width} (scores: mean answer NLL in nats; questions with a "
          f"fp32 margin >= {margin}):")
    header = (f"{'row':>9} {'agree':>9} {'max diff':>9} {'mean diff':>9} {'exact vs HF':>11} {'linear MB':>9} "
              f"{'vs bf16':>7} {'LLM MB':>8} {'load RSS MB':>11} {'load s':>6} {'ms/question':>11}")
    print(header)
    for r in rows:
        exact = "-" if r["exact"] is None else f"{r['exact']:.1e}"
        print(f"{r['row']:>9} {r['agree']:>4}/{r['counted']:<4} {r['max_diff']:>9.3f} {r['mean_diff']:>9.3f} {exact:>11} "
              f"{r['linear_mb']:>9.2f} {r['linear_vs_bf16']:>6.3f}x {r['llm_mb']:>8.1f} {r['rss_mb']:>11.1f} "
              f"{r['load_s']:>6.2f} {1000 * r['s_per_q']:>11.1f}")
    print("\nAgreement with fp32 as the model widens (4 layers; agreeing/counted, worst score difference):")
    print(f"{'width':>6} {'8bit':>18} {'4bit nf4':>18}")
    for s in sweep:
        cells = [f"{s[k][0]}/{s[k][1]} ({s[f'{k}_max']:.2f})" for k in ("8bit", "4bit-nf4")]
        print(f"{s['width']:>6} {cells[0]:>18} {cells[1]:>18}")
    by_row = {r["row"]: r for r in rows}
    eight = by_row["8bit"]
    rate = eight["agree"] / max(eight["counted"], 1)
    worst_exact = max(r["exact"] for r in rows if r["exact"] is not None)
    print("\nTargets:")
    print(f"  8-bit agreement with full precision >= {TARGET_AGREEMENT_8BIT:.0%}: {rate:.1%} "
          f"({eight['agree']}/{eight['counted']}) -> {verdict(rate >= TARGET_AGREEMENT_8BIT)}")
    for row in ("4bit-nf4", "4bit-fp4"):
        ratio = by_row[row]["linear_vs_bf16"]
        print(f"  {row} linear-layer weights <= {TARGET_MEMORY_4BIT}x bf16: {ratio:.3f}x -> "
              f"{verdict(ratio <= TARGET_MEMORY_4BIT)}")
    print(f"  plugin vs transformers' own quantized LLM + same adapter <= {EXACTNESS:g}: {worst_exact:.1e} -> "
          f"{verdict(worst_exact <= EXACTNESS)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512, help="hidden size of the model in the precision table")
    parser.add_argument("--widths", default="128,256,512,1024", help="hidden sizes of the agreement sweep")
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--margin", type=float, default=0.05, help="fp32 gap between the two best options, in nats")
    parser.add_argument("--probe-load", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_load:
        probe_load(args.probe_load, args.row)
        return 0
    torch.set_num_threads(1)
    from topa_plugin.demo import toy

    items = questions(args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = toy.train_toy_tokenizer(root / "tokenizer", extra_text=tuple(f"{s} {a}" for s in SUBJECTS for a in ACTIONS)).parent
        rows = precision_table(build_checkpoint(root, tokenizer, args.width), items, args.margin)
        sweep = width_sweep(root, tokenizer, [int(w) for w in args.widths.split(",")], items, args.margin)
    report(args.width, rows, sweep, args.margin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
