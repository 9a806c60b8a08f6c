"""Run lmms-eval from Python with the TOPA model: `simple_evaluate(model="topa", ...)`.

This is what `lmms-eval --model topa --include_path DIR --tasks ...` does, for use inside
your own scripts and notebooks. Write a task folder for your EgoSchema-shaped rows and videos
first, then evaluate (tasks topa_egoschema_local: answer letters; topa_egoschema_local_mcppl:
rank the options by loss):

    topa lmms-tasks --data rows.jsonl --videos videos/ --out egoschema_tasks
    python examples/lmms_eval_python.py --checkpoint topa-13b --include-path egoschema_tasks \
        --tasks topa_egoschema_local --output results.json

lmms-eval's own tasks (e.g. egoschema_subset, which downloads EgoSchema) work without
--include-path. `--clip-pretrained openai` (the default) downloads the ViT-L-14 weights on
first use; offline, pass a local open_clip weights file (and a model-config JSON as
--clip-model). lmms-eval parses model_args as "key=value,...", so paths must not hold commas.
"""

import argparse
import json
import sys
from pathlib import Path

try:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import make_table
    from loguru import logger
except ImportError as exc:
    raise SystemExit(f"this example needs lmms-eval: pip install 'topa-plugin[eval]' ({exc})") from exc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="TOPA plugin directory")
    parser.add_argument("--tasks", nargs="+", required=True, help="lmms-eval task names")
    parser.add_argument("--include-path", help="extra task folder (written by `topa lmms-tasks`)")
    parser.add_argument("--clip-model", default="ViT-L-14", help="open_clip model name or model-config JSON")
    parser.add_argument("--clip-pretrained", default="openai", help="open_clip weights tag or local weights file")
    parser.add_argument("--memory", help="memory bank file overriding the checkpoint's")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=1, help="questions scored per call")
    parser.add_argument("--limit", type=int, help="only the first N docs of each task (for testing)")
    parser.add_argument("--output", help="write the results and per-doc samples to this JSON file")
    parser.add_argument("--verbosity", default="WARNING", help="lmms-eval log level")
    args = parser.parse_args()

    logger.remove()  # lmms-eval logs through loguru, at DEBUG unless told otherwise
    logger.add(sys.stderr, level=args.verbosity)
    task_manager = TaskManager(args.verbosity, include_path=args.include_path, model_name="topa")
    unknown = [t for t in args.tasks if t not in task_manager.all_tasks]
    if unknown:
        parser.error(f"unknown task(s) {unknown}" + ("" if args.include_path else "; forgot --include-path?"))

    model_args = {"pretrained": args.checkpoint, "clip_model": args.clip_model,
                  "clip_pretrained": args.clip_pretrained, "memory": args.memory}
    results = simple_evaluate(
        model="topa",
        model_args=",".join(f"{k}={v}" for k, v in model_args.items() if v is not None),
        tasks=args.tasks,
        task_manager=task_manager,
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        log_samples=True,
        verbosity=args.verbosity,
    )
    print(make_table(results))
    if args.output:
        kept = {"results": results["results"], "samples": results["samples"]}
        Path(args.output).write_text(json.dumps(kept, indent=2, default=str), encoding="utf-8")
        print(f"results and per-doc samples: {args.output}")


if __name__ == "__main__":
    main()
