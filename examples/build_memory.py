"""Build a TOPA memory bank (memory.safetensors) from a feature store.

At evaluation time TOPA replaces each video frame's CLIP image feature by a softmax mix of
CLIP *text* features (the memory), closing the gap between the text-only training and real
videos. The memory is the store's distinct frame features, normalised, in fp16; --size keeps a
seeded uniform sample (the release used 1M TextVid frames). Typical use, after
examples/extract_textvid_features.py:

    python examples/build_memory.py --features features/textvid --out memory.safetensors
    lmms-eval --model topa --model_args pretrained=topa-13b,memory=memory.safetensors ...
"""

import argparse

from topa_plugin import FeatureStore, build_memory, load_memory, save_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="feature store directory")
    parser.add_argument("--out", default="memory.safetensors", help="memory file to write")
    parser.add_argument("--size", type=int, default=None, help="keep this many distinct frames (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --size sample")
    args = parser.parse_args()

    memory, stats = build_memory(FeatureStore(args.features), args.size, args.seed)
    path = save_memory(memory, args.out)
    print(f"{stats['records']} records, {stats['frames']} frames, {stats['unique']} distinct")
    print(f"wrote {path}: {tuple(load_memory(path).shape)} (rows x feature dim)")


if __name__ == "__main__":
    main()
