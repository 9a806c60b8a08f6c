"""CLIP text features of your own textual videos (TextVid records), for training and the memory bank.

Each textual frame's captions are encoded with CLIP's text tower, normalised, averaged and
normalised again (the TOPA release's rule); the result is a sharded feature store that
`topa train` and examples/build_memory.py read. A rerun after an interruption resumes.
Without --textvid the bundled sample is used. With the real encoder:

    python examples/extract_textvid_features.py --textvid my_tideos.jsonl --out features/textvid

`--clip-pretrained openai` (the default) downloads the ViT-L-14 weights on first use;
offline, pass a local open_clip weights file (and a model-config JSON as --clip-model).
Records follow the TextVid release schema (idx, frames, global_video_caption, QAs); bad
records are reported by file, record and field before anything is encoded.
"""

import argparse

import torch

from topa_plugin import FeatureStore, extract_textvid, load_clip, read_textvid, sample_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--textvid", default=str(sample_path()), help="TextVid .json or .jsonl (default: bundled sample)")
    parser.add_argument("--out", required=True, help="feature store directory to write")
    parser.add_argument("--clip-model", default="ViT-L-14", help="open_clip model name or model-config JSON")
    parser.add_argument("--clip-pretrained", default="openai", help="open_clip weights tag or local weights file")
    parser.add_argument("--batch-size", type=int, default=256, help="captions per CLIP forward")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    records = read_textvid(args.textvid)  # validates every record first
    encoder = load_clip(args.clip_model, args.clip_pretrained, device=args.device)
    extract_textvid(args.textvid, args.out, encoder, batch_size=args.batch_size)

    store = FeatureStore(args.out)
    first = records[0].idx
    print(f"{len(store)} textual videos from {args.textvid} -> {args.out} ({store.dim}-d, encoder {store.encoder})")
    print(f"record {first!r}: {len(records[0].frames)} frames -> features {tuple(store.get(first).shape)}")


if __name__ == "__main__":
    main()
