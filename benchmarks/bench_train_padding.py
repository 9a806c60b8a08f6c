"""Training-step throughput: dynamic padding (``TopaCollator``) vs the release's fixed padding to 150.

Both modes train the same TOPA model on the same batches of the bundled TextVid sample (task mix,
answer balancing, random 768-d frame features); fixed padding right-pads every batch to
``--max-seq-len`` tokens as the release's ``_get_padding_id`` does. Throughput counts real (non-pad)
tokens per second, so the ratio is the speed-up of one training step (forward, backward, AdamW).

The tokenizer is a sentencepiece model trained on the sample's own text (vocab 4000), which gives
prompt lengths close to Llama-2's (multiple choice ~100 tokens, summary ~90).

    python benchmarks/bench_train_padding.py                       # CPU, small Llama, batch 8
    python benchmarks/bench_train_padding.py --device cuda --shape llama2-7b --batch 18
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    # hidden, layers, heads, intermediate, vocab (None: the tokenizer's)
    "small": (256, 4, 4, 688, None),
    "llama2-7b": (4096, 32, 32, 11008, 32000),
}


def build_data(work: Path, max_feats: int, max_seq_len: int):
    """Processor + TextVid dataset over random unit frame features (CLIP's width, 768)."""
    from transformers import AutoTokenizer

    from topa_plugin.demo import toy
    from topa_plugin.features.writer import write_sharded
    from topa_plugin.processing import TopaProcessor
    from topa_plugin.textvid import read_textvid, sample_path
    from topa_plugin.training.textvid_dataset import TextVidDataset

    records = read_textvid(sample_path())
    corpus = [r.global_video_caption for r in records]
    corpus += [" ".join([q.question, *q.options, q.answer_open_ended or ""]) for r in records for q in r.qas]
    toy.train_toy_tokenizer(work / "tokenizer", extra_text=tuple(corpus), vocab_size=4000)
    processor = TopaProcessor(AutoTokenizer.from_pretrained(work / "tokenizer"), max_feats=max_feats)
    generator = torch.Generator().manual_seed(0)
    features = {r.idx: torch.nn.functional.normalize(torch.randn(len(r.frames), 768, generator=generator), dim=-1)
                for r in records}
    write_sharded(work / "features", {"kind": "bench", "encoder": "random", "dim": 768}, list(features),
                  list(features), lambda keys: {k: features[k] for k in keys}, shard_size=1000, dtype="float32")
    dataset = TextVidDataset(sample_path(), work / "features", processor, max_seq_len=max_seq_len, answer_balance=True)
    return processor, dataset


def build_model(shape: str, vocab_size: int, device: str, adapter_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from topa_plugin.configuration import TopaConfig
    from topa_plugin.modeling import TopaForCausalLM

    hidden, layers, heads, intermediate, vocab = SHAPES[shape]
    config = LlamaConfig(vocab_size=vocab or vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16  # frozen LLM as in training
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        llm = LlamaForCausalLM(config)
    torch.set_default_dtype(default)
    model = TopaForCausalLM(TopaConfig(text_config=llm.config, base_model_name_or_path="random",
                                       adapter_len=adapter_len), llm=llm).to(device)
    model.train()
    return model


def pad_to(batch: dict, length: int, pad_id: int) -> dict:
    """The release's fixed padding: every sequence tensor right-padded to ``length``."""
    extra = length - batch["input_ids"].shape[1]
    out = dict(batch)
    for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100)):
        out[key] = torch.nn.functional.pad(batch[key], (0, extra), value=value)
    return out


def time_steps(model, batches, device: str, warmup: int) -> list[float]:
    from topa_plugin.training.trainer import decays

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for n, p in params if decays(n, p, decay_gates=True)], "weight_decay": 0.1},
                                   {"params": [p for n, p in params if not decays(n, p, decay_gates=True)], "weight_decay": 0.0}],
                                  lr=1e-4, betas=(0.9, 0.95))
    times = []
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-seq-len", type=int, default=150)
    parser.add_argument("--adapter-len", type=int, default=50)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on the LLM")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from topa_plugin.training.collator import BATCH_TASK, TopaCollator

    order = random.Random(0)
    n_batches = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        processor, dataset = build_data(Path(tmp), 10, args.max_seq_len)
        collate = TopaCollator(pad_token_id=processor.eos_id)
        batches = [collate([dataset[order.randrange(len(dataset))] for _ in range(args.batch)])
                   for _ in range(n_batches)]
        for batch in batches:
            batch.pop(BATCH_TASK)  # the step kind is for the trainer's log, not a model input
    model = build_model(args.shape, len(processor.tokenizer), args.device, args.adapter_len)
    if args.checkpointing:
        model.activation_checkpointing_enable()
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches[args.warmup:])

    modes = {"dynamic": batches, f"fixed {args.max_seq_len}": [pad_to(b, args.max_seq_len, processor.eos_id) for b in batches]}
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"shape {args.shape}, batch {args.batch}, 2 x {args.steps} timed steps (each after {args.warmup} warm-up), "
          f"checkpointing {'on' if args.checkpointing else 'off'}")
    print(f"{'padding':>12} {'tokens/batch':>13} {'real tok/s':>11} {'step s':>8} {'steps/s':>8} {'peak GiB':>9}")
    times = {name: [] for name in modes}
    peaks = {}
    for _ in range(2):  # alternate the modes so that drift in machine load hits both alike
        for name, mode_batches in modes.items():
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name] += time_steps(model, mode_batches, args.device, args.warmup)
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    results = {}
    for name, mode_batches in modes.items():
        step, peak = statistics.median(times[name]), peaks[name]
        width = statistics.mean(b["input_ids"].numel() for b in mode_batches[args.warmup:])
        results[name] = real_tokens / (step * args.steps)
        print(f"{name:>12} {width:>13.0f} {results[name]:>11.0f} {step:>8.3f} {1 / step:>8.2f} {peak:>9.1f}")
    dynamic, fixed = results.values()
    print(f"dynamic / fixed throughput: {dynamic / fixed:.2f}x")


if __name__ == "__main__":
    main()
