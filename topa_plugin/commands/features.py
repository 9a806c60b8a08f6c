"""`topa features textvid|videos|import-release`: write sharded, resumable feature stores."""

from __future__ import annotations

import argparse
from pathlib import Path

from topa_plugin.commands import check_output_dir, positive_int

COMMAND = "features"
# Files that mark a folder as a (finished or half-written) feature store, which a rerun resumes.
STORE_FILES = ("index.json", "progress*", "shard-*", "*.tmp")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_common(p: argparse.ArgumentParser, shard_size: int) -> None:
    p.add_argument("--out", required=True, help="output directory (rerun the same command to resume)")
    p.add_argument("--shard-size", type=positive_int, default=shard_size, help="entries per shard file")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage dtype")


def _add_encoder(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument("--clip-model", default="ViT-L-14", help="open_clip model name or model-config JSON")
    p.add_argument("--clip-pretrained", default="openai", help="open_clip pretrained tag or weights file")
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--precision", default=None,
                   help="open_clip precision: fp32, fp16, bf16, ... (default fp16 on GPU, fp32 on CPU)")


def _encoder(args):
    from topa_plugin.features.clip import load_clip

    return load_clip(args.clip_model, args.clip_pretrained, args.device or _default_device(), args.precision)


def _report(args, run) -> int:
    """Check --out, then run a job; input errors (``utils.errors.INPUT_ERRORS``) become one clear line, exit 2."""
    from topa_plugin.features.writer import store_summary

    out = Path(args.out)
    is_store = out.is_dir() and any(p.match(pattern) for p in out.iterdir() for pattern in STORE_FILES)
    check_output_dir(f"{COMMAND} {args.features_command}", out, ("*",) if is_store else ())
    index = run()
    print(f"wrote {index}: {store_summary(index)}")
    return 0


def run_textvid(args) -> int:
    from topa_plugin.features.extract import check_textvid, extract_textvid

    def run():
        source = check_textvid(args.textvid, args.skip_invalid)  # before CLIP loads
        return extract_textvid(source, args.out, _encoder(args), args.batch_size, args.shard_size, args.dtype)

    return _report(args, run)


def run_videos(args) -> int:
    from topa_plugin.features.extract import extract_videos

    return _report(args, lambda: extract_videos(args.videos, args.out, _encoder(args), args.frames, args.batch_size,
                                          args.shard_size, args.dtype, args.workers, args.skip_invalid))


def run_import_release(args) -> int:
    from topa_plugin.features.extract import import_release

    return _report(args, lambda: import_release(args.textvid, args.features_dir, args.out, args.encoder,
                                          args.shard_size, args.dtype))


def _add_skip_invalid(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--skip-invalid", action="store_true",
                   help=f"leave out {what} and list each, with why, in <out>.rejects.jsonl (default: stop, naming all)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("features", help="extract CLIP features into sharded safetensors stores")
    sub = parser.add_subparsers(dest="features_command", metavar="SOURCE", required=True)

    p = sub.add_parser("textvid", help="CLIP text features of TextVid frames (captions fused per frame)")
    p.add_argument("--textvid", required=True, help="release textvid.json or .jsonl")
    _add_common(p, shard_size=1000)
    _add_encoder(p, batch_size=256)
    _add_skip_invalid(p, "invalid records")
    p.set_defaults(func=run_textvid)

    p = sub.add_parser("videos", help="CLIP image features of uniformly sampled video frames")
    p.add_argument("--videos", required=True, help="directory of videos or a text file listing one per line")
    p.add_argument("--frames", type=positive_int, default=10, help="frames sampled per video")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes (default: min(8, cores); 0 decodes in the main process)")
    _add_common(p, shard_size=256)
    _add_encoder(p, batch_size=64)
    _add_skip_invalid(p, "videos that cannot be decoded")
    p.set_defaults(func=run_videos)

    p = sub.add_parser("import-release", help="convert the release's features/{idx}.pkl into a store")
    p.add_argument("--textvid", required=True, help="the release textvid.json the features belong to")
    p.add_argument("--features-dir", required=True, help="directory holding {idx}.pkl files")
    p.add_argument("--encoder", default="ViT-L-14|openai", help="encoder identity recorded in the index")
    _add_common(p, shard_size=1000)
    p.set_defaults(func=run_import_release)
