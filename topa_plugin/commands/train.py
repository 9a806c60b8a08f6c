"""`topa train ...`: forwards every argument to ``python -m topa_plugin.training.train`` (same flags, same --config)."""

from __future__ import annotations

import argparse


def run(args) -> int:
    from topa_plugin.training.train import main

    return main(args.train_args, prog="topa train")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="TOPA pre-alignment / finetuning (LLaVA-style flags; `topa train --help` lists them)",
        add_help=False,  # --help belongs to the training parser
        prefix_chars="\0",  # pass every flag through untouched
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)
