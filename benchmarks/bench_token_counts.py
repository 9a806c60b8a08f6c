"""Token counts for the training length check: cached whitespace segments vs the tokenizer, side by side.

Builds the texts the start-up length check counts (each multiple-choice and open-ended prompt's text
before its answer) for ``--records`` synthetic release-schema Tideos, then counts them with
``TopaProcessor.count_tokens`` (``SegmentCounter`` on a Llama-2-style tokenizer) and with
``TopaProcessor.tokenize_counts`` (one batched call to the Rust tokenizer), checks that every count
agrees and prints both times and their ratio. The tokenizer is a sentencepiece BPE trained like
Llama-2's (byte fallback, split digits) on the benchmark's own words.

    python benchmarks/bench_token_counts.py                 # 20k records, about 80k texts
    python benchmarks/bench_token_counts.py --records 5000
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_textvid_scale as scale  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--vocab", type=int, default=8000, help="tokenizer vocabulary size (Llama-2: 32000)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from topa_plugin.demo import toy
    from topa_plugin.processing import TopaProcessor

    rng = random.Random(0)
    captions = [scale._words(rng, 8) for _ in range(scale.CAPTIONS)]
    records = [scale.make_record(i, rng, captions) for i in range(args.records)]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = tuple(qa["question"] + " " + " ".join(qa["options"]) for r in records[:2000] for qa in r["QAs"])
        toy.train_toy_tokenizer(tmp, corpus, vocab_size=args.vocab)
        processor = TopaProcessor(AutoTokenizer.from_pretrained(tmp))
    texts = []
    for r in records:
        for qa in r["QAs"]:
            for t in (processor.multiple_choice_template(qa["question"], qa["options"], 0, "always"),
                      processor.open_ended_template(qa["question"], qa["answer_open_ended"], "always")):
                texts.append(t.rest[:t.answer_char])
    assert processor._segment_counter is not None, "the tokenizer should qualify for segment counts"

    timings = {}
    for name, count in (("tokenizer", processor.tokenize_counts), ("segments", processor.count_tokens)):
        start, cpu = time.perf_counter(), time.process_time()
        timings[name] = (count(texts), time.perf_counter() - start, time.process_time() - cpu)
    if timings["segments"][0] != timings["tokenizer"][0]:
        raise SystemExit("segment counts differ from the tokenizer's")
    print(f"{len(texts)} texts of {args.records} records, counts identical")
    for name, (_, wall, cpu) in timings.items():
        print(f"{name:<10} {wall:7.2f} s wall {cpu:7.2f} s CPU")
    print(f"speed-up: {timings['tokenizer'][1] / timings['segments'][1]:.1f}x wall, "
          f"{timings['tokenizer'][2] / timings['segments'][2]:.1f}x CPU")


if __name__ == "__main__":
    main()
