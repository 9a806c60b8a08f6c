"""Generate TextVid records ("Tideos") with an LLM, resumably: the request loop.

A run appends accepted records to ``FILE.jsonl`` until it holds exactly ``num``
records. Every finished request leaves exactly one line: the record in
``FILE.jsonl``, or its rejection (reason, details, raw response) in
``FILE.rejections.jsonl``. The request counter therefore continues across runs,
and with it the condition and sampling seed each request gets.

The pieces live beside this loop, one job each: ``conditions`` (what a request asks),
``responses`` (parse and check a reply), ``output_files`` (append-only files and their
repair), ``judge`` (accept or reject each reply). The names callers use are re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from topa_plugin.textvid.backends import Backend, BackendError, ConnectionFailure, TransientBackendError
from topa_plugin.textvid.conditions import BUILTIN_SOURCES, FRAME_RANGE, load_conditions, load_prompt
from topa_plugin.textvid.errors import GenerationError
from topa_plugin.textvid.judge import GenerationReport, Judge, Outcome
from topa_plugin.textvid.output_files import OutputFiles, rejections_path
from topa_plugin.textvid.responses import content_key

__all__ = [
    "BUILTIN_SOURCES", "FRAME_RANGE", "GenerateOptions", "GenerationError", "GenerationReport", "backoff_delay",
    "content_key", "generate", "load_conditions", "load_prompt", "rejections_path", "request_seed",
]

log = logging.getLogger(__name__)


@dataclass
class GenerateOptions:
    """One run's settings; the CLI flags of `topa textvid generate`."""

    out: Path
    num: int
    source: str = "howto"
    seed: int = 0
    temperature: float = 1.0
    max_tokens: int = 4096
    concurrency: int = 4
    max_attempts: int = 5          # per request, counting the first try
    max_requests: int | None = None  # per run; default 3 * missing records + 10
    prompt_template: Path | None = None
    backoff: float = 1.0           # first retry wait (seconds) when the server gives no Retry-After
    max_backoff: float = 60.0
    max_unreachable: int = 3       # requests in a row that could not connect before the run stops

    def check(self) -> None:
        for name in ("num", "concurrency", "max_attempts", "max_tokens", "max_unreachable"):
            if getattr(self, name) < 1:
                raise GenerationError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_requests is not None and self.max_requests < 1:
            raise GenerationError(f"--max-requests must be at least 1, got {self.max_requests}")
        if self.temperature < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise GenerationError("--temperature and backoff times must not be negative")


def backoff_delay(attempt: int, *, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Wait before retry ``attempt`` (1 = first retry): the server's Retry-After when given,
    else base * 2**(attempt-1) up to ``cap``; plus up to 25% jitter so workers spread out."""
    delay = retry_after if retry_after is not None else min(cap, base * 2 ** (attempt - 1))
    return delay * (1.0 + 0.25 * rng.random())


def request_seed(seed: int, request: int) -> int:
    return (seed * 1_000_003 + request) & 0x7FFFFFFF


def run_request(backend: Backend, messages, options: GenerateOptions, request: int, condition: str,
                sleep: Callable[[float], None]) -> Outcome:
    """One request with retries on transient failures (runs in a worker thread)."""
    rseed = request_seed(options.seed, request)
    rng = random.Random(rseed)
    for attempt in range(1, options.max_attempts + 1):
        try:
            completion = backend.complete(messages, temperature=options.temperature,
                                          max_tokens=options.max_tokens, seed=rseed)
            return Outcome(request, condition, completion, None, attempt - 1)
        except TransientBackendError as e:
            if attempt == options.max_attempts:
                return Outcome(request, condition, None, f"{e} (gave up after {attempt} attempts)", attempt - 1,
                               unreachable=isinstance(e, ConnectionFailure))
            delay = backoff_delay(attempt, base=options.backoff, cap=options.max_backoff,
                                  retry_after=e.retry_after, rng=rng)
            log.warning("request %d: %s; retry %d of %d in %.2f s", request, e, attempt,
                        options.max_attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns")


def generate(backend: Backend, options: GenerateOptions, *, progress: bool = True,
             sleep: Callable[[float], None] = time.sleep) -> GenerationReport:
    """Append generated Tideos to ``options.out`` until it holds ``options.num`` records.

    Stops early (report.complete False) when the request budget is spent; raises
    BackendError for failures that every request would hit, after recording the
    requests already in flight.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    options.check()
    conditions = load_conditions(options.source)
    prompt = load_prompt(conditions.kind, options.prompt_template)
    files = OutputFiles(Path(options.out))
    try:
        report = GenerationReport(out=files.out, target=options.num, existing=files.count,
                                  file_repairs=list(files.repairs))
        missing = options.num - files.count
        if missing <= 0:
            log.info("%s already holds %d records (--num %d): nothing to do", files.out, files.count, options.num)
            return report
        budget = options.max_requests if options.max_requests is not None else 3 * missing + 10
        workers = min(options.concurrency, backend.max_concurrency or options.concurrency)
        if workers < options.concurrency:
            log.info("the %s backend runs %d request(s) at a time", backend.name, workers)
        judge = Judge(files, report, conditions, backend, options.seed)
        next_request = files.next_request
        bar = tqdm(total=options.num, initial=files.count, unit="tideo", desc="generate", disable=not progress)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="textvid-generate")
        pending: set[Future] = set()
        fatal: BackendError | None = None
        try:
            with logging_redirect_tqdm() if progress else contextlib.nullcontext():
                while True:
                    while (fatal is None and len(pending) < workers and report.accepted + len(pending) < missing
                           and report.requests < budget):
                        condition = conditions.pick(options.seed, next_request)
                        pending.add(pool.submit(run_request, backend, prompt.messages(condition), options,
                                                next_request, condition, sleep))
                        next_request += 1
                        report.requests += 1
                    if not pending:
                        break
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        try:
                            outcome = future.result()
                        except BackendError as e:
                            fatal = fatal or e
                            continue
                        bar.update(int(judge(outcome)))
                        fatal = fatal or judge.unreachable_error(options.max_unreachable)
                        bar.set_postfix(accepted=report.accepted, rejected=sum(report.rejected.values()))
        finally:
            pool.shutdown(wait=not pending, cancel_futures=True)
            bar.close()
        if fatal is not None:
            raise fatal
        return report
    finally:
        files.close()
