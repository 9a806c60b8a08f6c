"""``topa demo``: the offline end-to-end toy run (see topa_plugin.demo.pipeline)."""

from __future__ import annotations

from pathlib import Path

from topa_plugin.commands import check_output_dir, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline offline at toy scale (about a minute on 2 CPU cores)",
        description="TextVid sample -> tiny CLIP features -> memory -> pre-alignment through the LLaVA "
        "trainer -> zero-shot lmms-eval on generated videos. Random toy models: chance-level answers.",
    )
    parser.add_argument("--out", default="topa-demo", help="output folder (a previous demo folder is replaced)")
    parser.add_argument("--steps", type=positive_int, default=100, help="pre-alignment training steps")
    parser.set_defaults(func=run)


def run(args) -> int:
    from topa_plugin.demo.pipeline import MARKER, run_demo

    previous_demo = (Path(args.out) / MARKER).is_file()
    check_output_dir("demo", args.out, ("*",) if previous_demo else ())  # only a demo folder is replaced
    run_demo(args.out, steps=args.steps)
    return 0
