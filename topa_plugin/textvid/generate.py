"""Generate TextVid records ("Tideos") with an LLM, resumably.

A run appends accepted records to ``FILE.jsonl`` until it holds exactly ``num``
records. Every finished request leaves exactly one line: the record in
``FILE.jsonl``, or its rejection (reason, details, raw response) in
``FILE.rejections.jsonl``. The request counter therefore continues across runs,
and with it the condition and sampling seed each request gets.

Parsing is strict ``json.loads`` with ONE local repair attempt and no second model
call: parse again starting at the first ``{`` and ignore whatever follows the end
of that object, which removes markdown code fences and chatter around the JSON.
Anything still unparseable is rejected as ``invalid_json`` (or ``truncated`` when
the model stopped at the token limit).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import re
import string
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from topa_plugin.textvid.backends import Backend, BackendError, Completion, ConnectionFailure, TransientBackendError
from topa_plugin.textvid.records import TextVidRecord, append_jsonl, read_textvid, validate_records
from topa_plugin.utils.errors import TopaInputError

log = logging.getLogger(__name__)

BUILTIN_SOURCES = ("howto", "webvid", "ego", "objects")
FRAME_RANGE = (5, 15)
_RECORD_KEYS = frozenset({"frames", "global_video_caption", "QAs"})
_QA_KEYS = frozenset({"question", "options", "answer", "answer_open_ended"})
_TEMPLATE_FIELDS = "$condition, $source_instruction, $min_frames, $max_frames ($$ for a literal $)"
_MAX_LOGGED_RESPONSE = 100_000


class GenerationError(TopaInputError, ValueError):
    """Bad generation input (source, template, output file), named in the message."""


# ---------------------------------------------------------------- conditions and prompts

def _package_file(*parts: str) -> Path:
    return Path(str(resources.files(__package__).joinpath(*parts)))


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return tuple(order)


@dataclass(frozen=True)
class Conditions:
    """The lines a source offers; ``tag`` prefixes record ids, ``kind`` picks the source instruction."""

    tag: str
    kind: str
    lines: tuple[str, ...]

    def pick(self, seed: int, request: int) -> str:
        """Condition of request number ``request``: each pass over the list is a fresh seeded
        permutation, so every condition is used once before any is used again."""
        epoch, pos = divmod(request, len(self.lines))
        return self.lines[_permutation(seed, epoch, len(self.lines))[pos]]


def load_conditions(source: str) -> Conditions:
    """A built-in seed list (howto, webvid, ego, objects) or a UTF-8 file, one condition per
    line; blank lines separate nothing and are not conditions."""
    if source in BUILTIN_SOURCES:
        path, kind, tag = _package_file("seeds", f"{source}.txt"), source, source
    else:
        path = Path(source)
        if not path.is_file():
            raise GenerationError(f"--source {source!r} is neither one of {', '.join(BUILTIN_SOURCES)} nor a file")
        kind, tag = "file", re.sub(r"[^A-Za-z0-9]+", "-", path.stem).strip("-") or "file"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GenerationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not lines:
        raise GenerationError(f"{path}: no conditions (expected one per line)")
    return Conditions(tag, kind, lines)


@dataclass(frozen=True)
class PromptTemplate:
    """System text, user template and the source's instruction, all ``string.Template`` ($name)."""

    system: str
    user: string.Template
    instruction: string.Template

    def messages(self, condition: str) -> list[dict[str, str]]:
        instruction = self.instruction.substitute(condition=condition)
        user = self.user.substitute(condition=condition, source_instruction=instruction,
                                    min_frames=FRAME_RANGE[0], max_frames=FRAME_RANGE[1])
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def load_prompt(kind: str, template: str | os.PathLike | None = None) -> PromptTemplate:
    """The packaged prompt for a source kind; ``template`` replaces the user message template."""
    instructions = json.loads(_package_file("prompts", "sources.json").read_text(encoding="utf-8"))
    path = Path(template) if template is not None else _package_file("prompts", "tideo.txt")
    try:
        user_text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GenerationError(f"--prompt-template {path}: cannot read: {e}") from e
    prompt = PromptTemplate(
        system=_package_file("prompts", "system.txt").read_text(encoding="utf-8").strip(),
        user=string.Template(user_text),
        instruction=string.Template(instructions[kind]),
    )
    probe = "\x00condition\x00"
    try:
        user = prompt.messages(probe)[1]["content"]
    except KeyError as e:
        raise GenerationError(f"{path}: unknown placeholder ${e.args[0]}; available: {_TEMPLATE_FIELDS}") from e
    except ValueError as e:
        raise GenerationError(f"{path}: malformed placeholder ({e}); available: {_TEMPLATE_FIELDS}") from e
    if probe not in user:
        raise GenerationError(f"{path}: uses neither $condition nor $source_instruction, "
                              "so every request would get the same prompt")
    return prompt


# ---------------------------------------------------------------- parsing and checks

class ParseFailure(ValueError):
    pass


def parse_json_object(text: str) -> tuple[Any, bool]:
    """(value, repaired): strict parse, else the one repair described in the module docstring."""
    try:
        return json.loads(text), False
    except json.JSONDecodeError as strict:
        start = text.find("{")
        if start < 0:
            raise ParseFailure(f"no JSON object in the response: {strict.msg} (line {strict.lineno}, "
                               f"column {strict.colno})") from strict
    try:
        value, _end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise ParseFailure(f"invalid JSON after repair: {e.msg} (line {e.lineno}, column {e.colno})") from e
    return value, True


def check_tideo(value: Any) -> tuple[str, list[str]] | None:
    """(reason, details) when a parsed response is not an acceptable Tideo, None when it is.

    The release schema is checked by the records module; on top, generation asks for
    exactly the schema's keys, FRAME_RANGE frames and an open-ended answer per question.
    """
    if not isinstance(value, dict):
        return "schema", [f"expected a JSON object, got {type(value).__name__}"]
    problems = validate_records([{**value, "idx": "pending"}], "response")  # the generator assigns ids
    if problems:
        return "schema", [f"{p.field}: {p.message}" if p.field else p.message for p in problems]
    unexpected = [k for k in value if k not in _RECORD_KEYS and k != "idx"]
    unexpected += [f"QAs[{i}].{k}" for i, qa in enumerate(value["QAs"]) for k in qa if k not in _QA_KEYS]
    if unexpected:
        return "unexpected_keys", [f"unexpected key {k!r}" for k in unexpected]
    n = len(value["frames"])
    if not FRAME_RANGE[0] <= n <= FRAME_RANGE[1]:
        return "frame_count", [f"{n} frames, expected {FRAME_RANGE[0]} to {FRAME_RANGE[1]}"]
    missing = [f"QAs[{i}].answer_open_ended: missing"
               for i, qa in enumerate(value["QAs"]) if "answer_open_ended" not in qa]
    if missing:
        return "missing_open_answer", missing
    return None


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"\W+", " ", text.lower()).split())


def content_key(global_caption: str, questions: list[str]) -> str:
    """De-duplication key: hash of the normalised global caption and questions."""
    text = "\n".join([_normalise(global_caption), *map(_normalise, questions)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_id(tag: str, key: str) -> str:
    """Ids are content hashes, so one Tideo has one id in every run and duplicates share ids."""
    return f"{tag}-{key[:16]}"


# ---------------------------------------------------------------- retries

def backoff_delay(attempt: int, *, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Wait before retry ``attempt`` (1 = first retry): the server's Retry-After when given,
    else base * 2**(attempt-1) up to ``cap``; plus up to 25% jitter so workers spread out."""
    delay = retry_after if retry_after is not None else min(cap, base * 2 ** (attempt - 1))
    return delay * (1.0 + 0.25 * rng.random())


def request_seed(seed: int, request: int) -> int:
    return (seed * 1_000_003 + request) & 0x7FFFFFFF


@dataclass
class _Outcome:
    request: int
    condition: str
    completion: Completion | None
    error: str | None
    retries: int
    unreachable: bool = False  # every attempt failed to connect


def _run_request(backend: Backend, messages, options: "GenerateOptions", request: int, condition: str,
                 sleep: Callable[[float], None]) -> _Outcome:
    """One request with retries on transient failures (runs in a worker thread)."""
    rseed = request_seed(options.seed, request)
    rng = random.Random(rseed)
    for attempt in range(1, options.max_attempts + 1):
        try:
            completion = backend.complete(messages, temperature=options.temperature,
                                          max_tokens=options.max_tokens, seed=rseed)
            return _Outcome(request, condition, completion, None, attempt - 1)
        except TransientBackendError as e:
            if attempt == options.max_attempts:
                return _Outcome(request, condition, None, f"{e} (gave up after {attempt} attempts)", attempt - 1,
                                unreachable=isinstance(e, ConnectionFailure))
            delay = backoff_delay(attempt, base=options.backoff, cap=options.max_backoff,
                                  retry_after=e.retry_after, rng=rng)
            log.warning("request %d: %s; retry %d of %d in %.2f s", request, e, attempt,
                        options.max_attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns")


# ---------------------------------------------------------------- output files

def _fix_torn_tail(path: Path) -> str | None:
    """Make ``path`` end with a newline after a crash; returns what was done, if anything.

    A last line without its newline is a write cut short: it is cut off, unless it is a
    complete JSON value (cut exactly before the newline), which gets its newline back.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb+") as f:
        data_end = f.seek(0, os.SEEK_END)
        f.seek(data_end - 1)
        if f.read(1) == b"\n":
            return None
        pos, keep = data_end, 0
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            newline = f.read(pos - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        f.seek(keep)
        tail = f.read()
        try:
            json.loads(tail)
        except (json.JSONDecodeError, UnicodeDecodeError):
            f.truncate(keep)
            action = f"{path}: cut off an incomplete last line ({data_end - keep} bytes, left by a crash)"
        else:
            f.write(b"\n")
            action = f"{path}: added the missing newline after the last line"
        f.flush()
        os.fsync(f.fileno())
    return action


def rejections_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.rejections.jsonl")


class _OutputFiles:
    """The output JSONL (append-only, one run at a time) and its rejections log."""

    def __init__(self, out: Path):
        if out.suffix != ".jsonl":
            raise GenerationError(f"--out {out}: expected a .jsonl file")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.rejections = rejections_path(out)
        self._lock = open(out, "ab")  # noqa: SIM115 (held for the whole run; closed by close())
        try:
            _lock_exclusive(self._lock, out)
            self.repairs = [a for a in (_fix_torn_tail(out), _fix_torn_tail(self.rejections)) if a]
            for action in self.repairs:
                log.warning("%s", action)
            records = read_textvid(out) if out.stat().st_size else []
            self.ids = {r.idx for r in records}
            self.keys = {content_key(r.global_video_caption, [qa.question for qa in r.qas]) for r in records}
            self.count = len(records)
            logged = _read_rejections(self.rejections)
            meta = [r.extra.get("generation") for r in records]
            numbers = [e.get("request") for e in logged] + [m.get("request") for m in meta if isinstance(m, dict)]
            numbers = [n for n in numbers if isinstance(n, int)]
            # Requests in flight when a run died left no line; never reuse a number that did.
            self.next_request = max(self.count + len(logged), max(numbers, default=-1) + 1)
            self._rejection_log = open(self.rejections, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        except BaseException:
            self._lock.close()
            raise

    def append(self, record: TextVidRecord, key: str) -> None:
        append_jsonl(self.out, record)
        self.ids.add(record.idx)
        self.keys.add(key)
        self.count += 1

    def reject(self, entry: dict[str, Any]) -> None:
        self._rejection_log.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._rejection_log.flush()
        os.fsync(self._rejection_log.fileno())

    def close(self) -> None:
        self._rejection_log.close()
        self._lock.close()


def _read_rejections(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise GenerationError(f"{path}: line {line_no}: invalid JSON ({e.msg}); "
                                      "this log belongs to the generator, do not edit it") from e
            if not isinstance(entry, dict):
                raise GenerationError(f"{path}: line {line_no}: expected a JSON object")
            entries.append(entry)
    return entries


def _lock_exclusive(handle, path: Path) -> None:
    """Refuse a second concurrent run on the same file (POSIX only; elsewhere unlocked)."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        raise GenerationError(f"{path}: another `topa textvid generate` run is writing this file") from e


# ---------------------------------------------------------------- the run

@dataclass
class GenerateOptions:
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


@dataclass
class GenerationReport:
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


class _Judge:
    """Turns finished requests into appended records or logged rejections (main thread only)."""

    def __init__(self, files: _OutputFiles, report: GenerationReport, conditions: Conditions, backend: Backend,
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

    def __call__(self, outcome: _Outcome) -> bool:
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

    def _reject(self, outcome: _Outcome, reason: str, details: list[str]) -> bool:
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
    files = _OutputFiles(Path(options.out))
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
        judge = _Judge(files, report, conditions, backend, options.seed)
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
                        pending.add(pool.submit(_run_request, backend, prompt.messages(condition), options,
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
