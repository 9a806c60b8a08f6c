"""The judge: each finished request becomes an appended record or a logged rejection, and the run's tally."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from topa_plugin.textvid.backends import Backend, BackendError, Completion
from topa_plugin.textvid.conditions import Conditions
from topa_plugin.textvid.output_files import OutputFiles, rejections_path
from topa_plugin.textvid.records import TextVidRecord
from topa_plugin.textvid.responses import ParseFailure, check_tideo, content_key, parse_json_object, record_id

log = logging.getLogger(__name__)

_MAX_LOGGED_RESPONSE = 100_000


@dataclass
class Outcome:
    """What one request came back with, after its retries."""

    request: int
    condition: str
    completion: Completion | None
    error: str | None
    retries: int
    unreachable: bool = False  # every attempt failed to connect


@dataclass
class GenerationReport:
    """The run's tally, printed at the end."""

    out: Path
    target: int
    existing: int
    accepted: int = 0
    requests: int = 0
    retries: int = 0
    repaired: int = 0
    rejected: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    file_repairs: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.existing + self.accepted

    @property
    def complete(self) -> bool:
        return self.total >= self.target

    def summary(self) -> str:
        lines = [(f"{self.out}: {self.total} of {self.target} records "
                  f"({self.accepted} new, {self.existing} from earlier runs)"),
                 f"requests {self.requests}, retries {self.retries}, JSON repaired {self.repaired}"]
        n_rejected = sum(self.rejected.values())
        lines.append(f"rejected {n_rejected}" + (f" (details in {rejections_path(self.out)}):" if n_rejected else ""))
        lines += [f"  {reason:<20} {count}" for reason, count in self.rejected.most_common()]
        lines.append(f"tokens: prompt {self.prompt_tokens}, completion {self.completion_tokens}, "
                     f"total {self.prompt_tokens + self.completion_tokens}")
        return "\n".join(lines)


class Judge:
    """Turns finished requests into appended records or logged rejections (main thread only)."""

    def __init__(self, files: OutputFiles, report: GenerationReport, conditions: Conditions, backend: Backend,
                 seed: int):
        self.files, self.report, self.conditions, self.backend, self.seed = files, report, conditions, backend, seed
        self.unreachable: list[str] = []  # errors of the latest requests in a row that could not connect

    def unreachable_error(self, limit: int) -> BackendError | None:
        """The error that stops the run once ``limit`` requests in a row found no server."""
        if len(self.unreachable) < limit:
            return None
        return BackendError(f"{len(self.unreachable)} requests in a row could not connect, each after all its "
                            f"attempts ({self.unreachable[-1]}); is the server running? Rerun the same command "
                            "to continue")

    def __call__(self, outcome: Outcome) -> bool:
        report = self.report
        self.unreachable = [*self.unreachable, outcome.error] if outcome.unreachable else []
        report.retries += outcome.retries
        completion = outcome.completion
        if completion is not None:
            report.prompt_tokens += completion.prompt_tokens
            report.completion_tokens += completion.completion_tokens
        if outcome.error is not None:
            return self._reject(outcome, "request_failed", [outcome.error])
        if not completion.text.strip():
            return self._reject(outcome, "empty_response", [f"finish_reason {completion.finish_reason!r}"])
        try:
            value, repaired = parse_json_object(completion.text)
        except ParseFailure as e:
            reason = "truncated" if completion.finish_reason == "length" else "invalid_json"
            return self._reject(outcome, reason, [str(e)])
        report.repaired += repaired
        verdict = check_tideo(value)
        if verdict is not None:
            return self._reject(outcome, *verdict)
        key = content_key(value["global_video_caption"], [qa["question"] for qa in value["QAs"]])
        rid = record_id(self.conditions.tag, key)
        if key in self.files.keys or rid in self.files.ids:
            return self._reject(outcome, "duplicate", [f"same global caption and questions as record {rid}"])
        record = TextVidRecord.from_dict({
            "idx": rid, "frames": value["frames"], "global_video_caption": value["global_video_caption"],
            "QAs": value["QAs"],
            "generation": {"source": self.conditions.tag, "condition": outcome.condition,
                           "backend": self.backend.name, "model": self.backend.model,
                           "seed": self.seed, "request": outcome.request},
        }, source=str(self.files.out), index=self.files.count)
        self.files.append(record, key)
        report.accepted += 1
        return True

    def _reject(self, outcome: Outcome, reason: str, details: list[str]) -> bool:
        self.report.rejected[reason] += 1
        completion = outcome.completion
        self.files.reject({
            "request": outcome.request, "condition": outcome.condition, "reason": reason, "details": details,
            "finish_reason": completion.finish_reason if completion else None,
            "response": completion.text[:_MAX_LOGGED_RESPONSE] if completion else None,
        })
        more = f" (+{len(details) - 1} more)" if len(details) > 1 else ""
        log.info("request %d rejected, %s: %s%s", outcome.request, reason, details[0], more)
        return False
