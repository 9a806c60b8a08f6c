"""`topa train ...`: forwards every argument to ``python -m topa_plugin.training.train`` (same flags, same --config).

Before the (slow) model load, the flags are checked here so a typo is one ``topa train: error:`` line: the
config file, the LLM and ``--init_from`` directories, and flags that contradict the ``--init_from`` checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from topa_plugin.commands import fail
from topa_plugin.utils.errors import first_line

COMMAND = "train"
PROG = "topa train"
# Flags whose value an --init_from checkpoint fixes: giving a different one is a contradiction.
CHECKPOINT_FIXED = ("adapter_len", "max_feats")


def _parse(argv: list[str]):
    """(model_args, data_args, flag names given on the command line or in --config)."""
    from topa_plugin.training.arguments import _pop_config, build_parser, parse_arguments, resolve_config, yaml_to_argv

    try:
        model_args, data_args, _ = parse_arguments(argv, PROG)
        config, rest = _pop_config(argv)
        given = [*yaml_to_argv(resolve_config(config), build_parser(PROG)), *rest] if config else rest
    except SystemExit as exc:
        if isinstance(exc.code, str):  # the parser's own refusals carry their message
            fail(COMMAND, exc.code)
        raise
    except (OSError, ValueError) as exc:  # an unreadable or malformed --config
        fail(COMMAND, first_line(exc))
    return model_args, data_args, {arg[2:].split("=", 1)[0] for arg in given if arg.startswith("--")}


def _check_llm(name: str, hint: str) -> None:
    """--model_name_or_path must name a loadable Hugging Face model (a local folder, or a cached hub id)."""
    import transformers

    try:
        transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        fail(COMMAND, f"--model_name_or_path {name}: not a Hugging Face model folder or reachable hub id{hint} "
                      f"({first_line(exc)})")


def _check_init_from(model_args, given: set[str]) -> None:
    """--init_from must be a TOPA plugin directory, and flags it fixes must not say otherwise."""
    from topa_plugin.configuration import TopaConfig

    directory = Path(model_args.init_from)
    if not (directory / "config.json").is_file():
        fail(COMMAND, f"--init_from {directory}: no config.json there (not a TOPA plugin directory)")
    try:
        config = TopaConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        fail(COMMAND, f"--init_from {directory / 'config.json'}: not a TOPA config ({first_line(exc)})")
    for name in CHECKPOINT_FIXED:
        value = getattr(model_args, name)
        if name in given and value != getattr(config, name):
            fail(COMMAND, f"--{name} {value} contradicts --init_from {directory}, whose {name} is "
                          f"{getattr(config, name)}; drop --{name}")


def _check_data(data_args) -> None:
    path = Path(data_args.data_path)
    if path.is_dir():
        fail(COMMAND, f"--data_path {path}: is a folder; give the TextVid or video-QA file")
    if not path.is_file():
        fail(COMMAND, f"--data_path {path}: no such file")


def preflight(argv: list[str]) -> None:
    """Fail with one line on flags that would otherwise stop the run later with a traceback."""
    model_args, data_args, given = _parse(argv)
    if model_args.model_name_or_path:
        hint = "; with --init_from the LLM comes from the checkpoint, drop it" if model_args.init_from else ""
        _check_llm(model_args.model_name_or_path, hint)
    if model_args.init_from:
        _check_init_from(model_args, given)
    _check_data(data_args)


def run(args) -> int:
    from topa_plugin.training.train import main

    if not {"-h", "--help"} & set(args.train_args):
        preflight(args.train_args)
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
