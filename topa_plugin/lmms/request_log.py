"""``request_log=FILE``: one JSON line per lmms-eval request saying how the model answered it.

Each line names the task and doc, the route taken (``rank``: options shown in the prompt were
ranked; ``loglikelihood``: the task's continuations were ranked; ``generate``: free generation;
``caption``: the authors' captioning protocol), the question and options the model saw, each
option's mean NLL (``losses``) where options were ranked, and its reply. ``topa report
--request-log`` reads it back. It shows what the model read from a prompt, which lmms-eval's sample logs leave out.
"""

from __future__ import annotations

import json
from pathlib import Path

_JSON_TYPES = (str, int, float, bool, list, dict, type(None))


class RequestLog:
    """Appends records to ``path`` (``path.rank<N>`` on rank N > 0); does nothing without a path."""

    def __init__(self, path: str | None, rank: int = 0):
        self.path = None if not path else Path(f"{path}.rank{rank}" if rank else path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, task: str, doc_id: int, doc: dict, mode: str, **fields) -> None:
        if self.path is None:
            return
        record = {"task": task, "doc_id": doc_id, "mode": mode, **fields,
                  "doc": {k: v for k, v in doc.items() if isinstance(v, _JSON_TYPES)}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
