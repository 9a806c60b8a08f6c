"""``topa demo``: the offline end-to-end toy run (see topa_plugin.demo.pipeline)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline offline at toy scale (about a minute on 2 CPU cores)",
        description="TextVid sample -> tiny CLIP features -> memory -> pre-alignment through the LLaVA "
        "trainer -> zero-shot lmms-eval on generated videos. Random toy models: chance-level answers.",
    )
    parser.add_argument("--out", default="topa-demo", help="output folder (a previous demo folder is replaced)")
    parser.add_argument("--steps", type=int, default=100, help="pre-alignment training steps")
    parser.set_defaults(func=run)


def run(args) -> int:
    from topa_plugin.demo.pipeline import run_demo

    run_demo(args.out, steps=args.steps)
    return 0
