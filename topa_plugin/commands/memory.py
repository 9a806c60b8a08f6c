"""`topa memory build|import`: the text-feature memory bank for zero-shot projection."""

from __future__ import annotations

from topa_plugin.commands import check_output_file, positive_int

COMMAND = "memory"


def run_build(args) -> int:
    from topa_plugin.features.memory import build_memory, save_memory
    from topa_plugin.features.store import FeatureStore

    check_output_file(f"{COMMAND} build", args.out)
    memory, stats = build_memory(FeatureStore(args.features), None if args.all else args.size, args.seed,
                                 args.allow_image_features)
    if not args.all and args.size > stats["unique"]:
        print(f"note: only {stats['unique']} distinct frames, fewer than --size {args.size}; using all of them")
    save_memory(memory, args.out)
    print(f"{stats['records']} records, {stats['frames']} frames, {stats['unique']} distinct; "
          f"wrote {stats['rows']} x {memory.shape[1]} rows to {args.out}")
    return 0


def run_import(args) -> int:
    from topa_plugin.features.memory import load_memory, save_memory

    check_output_file(f"{COMMAND} import", args.out)
    memory = load_memory(args.pkl)
    if args.limit is not None:
        memory = memory[:args.limit]
    norms = memory[:100_000].float().norm(dim=1)
    save_memory(memory, args.out)
    print(f"wrote {memory.shape[0]} x {memory.shape[1]} rows to {args.out} "
          f"(row norms in the first {len(norms)}: {norms.min():.4f}..{norms.max():.4f})")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("memory", help="build or import the memory bank used for projection")
    sub = parser.add_subparsers(dest="memory_command", metavar="ACTION", required=True)

    p = sub.add_parser("build", help="memory from a feature store: de-duplicated, normalised, fp16")
    p.add_argument("--features", required=True, help="feature store directory (topa features ...)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--size", type=positive_int, help="uniformly sample this many distinct frames")
    size.add_argument("--all", action="store_true", help="keep every distinct frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-image-features", action="store_true",
                   help="accept a store of video (image) features; a TOPA memory holds text features")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=run_build)

    p = sub.add_parser("import", help="convert the release memory.pkl (restricted loader) to safetensors")
    p.add_argument("--pkl", required=True, help="release memory.pkl")
    p.add_argument("--limit", type=positive_int, default=None, help="keep the first N rows (the release used 1M)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=run_import)
