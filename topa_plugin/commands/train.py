"""`topa train ...`: runs ``topa_plugin.training.train.main`` with every argument (same flags, same --config).

The training entry point owns the pre-flight (``topa_plugin.training.preflight``) and reports flags that cannot
work as one ``topa train: error:`` line, exit 2, exactly as it does for ``python -m topa_plugin.training.train``
under torchrun or deepspeed; errors found later in the data come back through ``topa_plugin.cli``.
"""

from __future__ import annotations

import argparse

PROG = "topa train"


def run(args) -> int:
    from topa_plugin.training.train import main

    return main(args.train_args, prog=PROG)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="TOPA pre-alignment / finetuning (LLaVA-style flags; `topa train --help` lists them)",
        add_help=False,  # --help belongs to the training parser
        prefix_chars="\0",  # pass every flag through untouched
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)
