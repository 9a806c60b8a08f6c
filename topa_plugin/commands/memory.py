"""`topa memory build|import`: the text-feature memory bank for zero-shot projection."""

from __future__ import annotations

from topa_plugin.commands import check_output_file, fail, positive_int

COMMAND = "memory"


def run_build(args) -> int:
    from topa_plugin.features.memory import build_memory, save_memory
    from topa_plugin.features.provenance import provenance_path, row_sources, write_provenance
    from topa_plugin.features.store import FeatureStore

    check_output_file(f"{COMMAND} build", args.out)
    store = FeatureStore(args.features)
    textvid = _textvid(args.textvid, store)
    memory, stats = build_memory(store, None if args.all else args.size, args.seed, args.allow_image_features)
    if not args.all and args.size > stats["unique"]:
        print(f"note: only {stats['unique']} distinct frames, fewer than --size {args.size}; using all of them")
    save_memory(memory, args.out)
    write_provenance(args.out, row_sources(store, stats["kept"], textvid))
    print(f"{stats['records']} records, {stats['frames']} frames, {stats['unique']} distinct; "
          f"wrote {stats['rows']} x {memory.shape[1]} rows to {args.out}")
    print(f"where each row came from: {provenance_path(args.out)}"
          + ("" if textvid else " (Tideo ids and frames; no captions: give --textvid FILE to record them)"))
    return 0


def _textvid(given: str | None, store) -> str | None:
    """The TextVid file whose captions the rows show: ``--textvid``, else the one the store was extracted
    from when it recorded it and it is still there; None (ids and frames only) otherwise."""
    from pathlib import Path

    if given is not None:
        if not Path(given).is_file():
            fail(f"{COMMAND} build", f"--textvid {given}: file not found")
        return given
    if store.kind == "textvid" and store.source and Path(store.source).is_file():
        return store.source
    return None


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
    p.add_argument("--textvid", default=None,
                   help="the TextVid file the store was extracted from, so the memory records each row's captions "
                        "(default: the file the store names, if it is still there)")
    p.add_argument("--out", required=True, help="output .safetensors file (and .provenance.jsonl beside it)")
    p.set_defaults(func=run_build)

    p = sub.add_parser("import", help="convert the release memory.pkl (restricted loader) to safetensors")
    p.add_argument("--pkl", required=True, help="release memory.pkl")
    p.add_argument("--limit", type=positive_int, default=None, help="keep the first N rows (the release used 1M)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=run_import)
