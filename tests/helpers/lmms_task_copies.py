"""Include-path copies of lmms-eval's installed task yamls with only the dataset pointed at local rows.

Everything else stays the task's own: prompts, ``lmms_eval_specific_kwargs``, ``process_results``,
metrics and aggregation, all still called from the installed ``lmms_eval.tasks`` modules. A copy
merges the yaml's ``include:`` chain the way lmms-eval does (each file's ``!function utils.f``
resolved next to that file), renames the task (built-in names win over include-path ones) and
replaces ``dataset_path``/``dataset_name``/``dataset_kwargs`` with a local JSON-lines file.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

COPY_PREFIX = "copy_"


class _Function(str):
    """A ``!function`` reference, kept as an absolute dotted path."""


def _tasks_root() -> Path:
    import lmms_eval.tasks

    return Path(lmms_eval.tasks.__file__).parent


def _loader_for(path: Path):
    root = _tasks_root()

    def construct(loader, node):
        *module, name = loader.construct_scalar(node).split(".")
        local = path.parent / (Path(*module).as_posix() + ".py")
        if local.exists():  # lmms-eval's relative import: next to the yaml that names it
            module = ["lmms_eval", "tasks", *local.relative_to(root).with_suffix("").parts]
        return _Function(".".join([*module, name]))

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", construct)
    return Loader


def _load_merged(path: Path) -> dict:
    """The yaml at ``path`` with its ``include:`` files merged under it (lmms-eval's order)."""
    config = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader_for(path)) or {}
    includes = config.pop("include", None)
    if includes is None:
        return config
    merged: dict = {}
    for include in reversed([includes] if isinstance(includes, str) else includes):
        merged.update(_load_merged((path.parent / include).resolve()))
    merged.update(config)
    return merged


def find_task_yaml(task: str) -> Path:
    """The installed yaml whose ``task:`` is ``task``."""
    for path in sorted(_tasks_root().rglob("*.yaml")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if f"task: {task}\n" in text or f'task: "{task}"' in text:
            return path
    raise FileNotFoundError(f"lmms-eval has no task yaml with task: {task}")


def _dump(config: dict) -> str:
    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(_Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))
    return yaml.dump(config, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def write_task_copy(task: str, docs: list[dict], out_dir: str | Path, yaml_path: str | Path | None = None) -> str:
    """Write ``<out_dir>/<copy name>.yaml`` and its rows; returns the copy's task name."""
    source = Path(yaml_path) if yaml_path else find_task_yaml(task)
    config = _load_merged(source)
    for key in ("dataset_path", "dataset_name", "dataset_kwargs", "group"):
        config.pop(key, None)
    split = config.get("test_split") or "test"
    name = COPY_PREFIX + task
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = out_dir / f"{name}.jsonl"
    rows.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    config.update({"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {split: rows.name}}})
    (out_dir / f"{name}.yaml").write_text(_dump(config), encoding="utf-8")
    return name
