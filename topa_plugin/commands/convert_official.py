"""`topa convert-official`: the authors' TOPA release (the "official" checkpoints) -> a plugin directory."""

from __future__ import annotations

import pickle

from topa_plugin.commands import fail

COMMAND = "convert-official"


def run(args) -> int:
    from topa_plugin.release.convert import RELEASE_MEMORY_ROWS, convert_official

    try:
        out = convert_official(
            args.out,
            args.checkpoint,
            llama_dir=args.llama_dir,
            base=args.base,
            memory=args.memory,
            dtype=args.dtype,
            memory_rows=RELEASE_MEMORY_ROWS if args.memory_rows is None else args.memory_rows or None,
        )
    except (pickle.UnpicklingError, ValueError, KeyError, OSError) as err:
        # ConversionError is a ValueError, UnsafePickleError an UnpicklingError; messages name the file.
        fail(COMMAND, str(err))
    print(f"wrote {out} (load with TopaForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-official",
        help="convert the authors' release (Meta Llama + checkpoint_N.pth + memory.pkl) to a plugin directory",
        description="Every release file is read with a restricted unpickler: a pickle that would run code is refused.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--llama-dir", help="Meta-format Llama dir (params.json, consolidated.*.pth; "
                        "tokenizer.model here or in the parent); the output is self-contained")
    source.add_argument("--base", help="existing Hugging Face Llama (path or hub id) to reference; "
                        "converts only the TOPA parts (the route for Llama-3-8B)")
    p.add_argument("--checkpoint", required=True, help="release checkpoint_N.pth")
    p.add_argument("--memory", help="release memory.pkl (or a memory .safetensors) for zero-shot projection")
    p.add_argument("--memory-rows", type=int,
                   help="keep the first N memory rows, 0 for all (default: the release's first 1M rows)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                   help="dtype of the converted base weights (default: as stored in the shards / base config)")
    p.add_argument("--out", required=True, help="output plugin directory (must not exist or be empty)")
    p.set_defaults(func=run)
