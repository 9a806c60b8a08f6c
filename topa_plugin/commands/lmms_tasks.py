"""``topa lmms-tasks``: where the offline EgoSchema tasks live, or a ready task folder for your data."""

from __future__ import annotations

import argparse

from topa_plugin.commands import check_output_dir, fail

COMMAND = "lmms-tasks"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "lmms-tasks",
        help="print the lmms-eval include path of the offline EgoSchema tasks, or write one for your data",
        description=(
            "Without --data: print the shipped include-path folder (its yamls read egoschema_local.jsonl "
            "next to them). With --data/--out: check the rows, find each video and write a ready folder "
            "for `lmms-eval --include_path OUT --tasks topa_egoschema_local[_mcppl]`."
        ),
    )
    parser.add_argument("--data", help="EgoSchema-shaped rows (.jsonl, .json or .parquet): video_idx, question, option (5), answer (0-4)")
    parser.add_argument("--videos", help="folder with <video_idx>.mp4 (rows may instead carry video_path)")
    parser.add_argument("--out", help="task folder to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from topa_plugin.lmms.taskdata import DATA_FILE, TASKS_DIR, TaskDataError, write_task_folder

    if args.data is None and args.out is None and args.videos is None:
        print(TASKS_DIR)
        return 0
    if args.data is None or args.out is None:
        fail(COMMAND, "--data and --out go together (and --videos unless rows carry video_path)")
    check_output_dir(COMMAND, args.out, ("*.yaml", DATA_FILE))  # a rerun rewrites its own folder
    try:
        out = write_task_folder(args.data, args.videos, args.out)
    except TaskDataError as exc:
        fail(COMMAND, str(exc))
    print(out.resolve())
    return 0
