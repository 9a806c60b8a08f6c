"""TextVid generation against a real HTTP stand-in for an OpenAI-compatible server, and a toy HF model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.openai_stub_server import ACCEPTED_KINDS, REJECTED_KINDS, StubOpenAIServer
from topa_plugin.textvid.backends import (
    BackendError,
    HFBackend,
    OpenAIBackend,
    make_backend,
)
from topa_plugin.textvid.generate import (
    FRAME_RANGE,
    GenerateOptions,
    GenerationError,
    content_key,
    generate,
    load_conditions,
    load_prompt,
    rejections_path,
)
from topa_plugin.textvid.reader import read_textvid

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def _backend(server: StubOpenAIServer) -> OpenAIBackend:
    return OpenAIBackend("stub-model", base_url=server.url, timeout=10)


def _options(tmp_path: Path, num: int, **kw) -> GenerateOptions:
    kw.setdefault("backoff", 0.001)
    return GenerateOptions(out=tmp_path / "tideos.jsonl", num=num, **kw)


def _rejection_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in rejections_path(out).read_text(encoding="utf-8").splitlines()]


def _assert_unique_valid(out: Path, num: int) -> list:
    records = read_textvid(out)  # validates every record and refuses duplicate ids
    assert len(records) == num
    keys = {content_key(r.global_video_caption, [qa.question for qa in r.qas]) for r in records}
    assert len(keys) == num
    return records


def test_accepts_valid_and_repairable_rejects_broken_with_reasons(tmp_path):
    rejected_kinds = list(REJECTED_KINDS)
    script = ["valid", "429", "fenced", *rejected_kinds, "500", "trailing", "503", "valid", "valid"]
    accepted = sum(kind in ACCEPTED_KINDS for kind in script)
    with StubOpenAIServer(script, delay=0.02) as server:
        report = generate(_backend(server), _options(tmp_path, accepted, concurrency=3, temperature=0.7,
                                                     max_tokens=999, source="ego"), progress=False)

    out = tmp_path / "tideos.jsonl"
    records = _assert_unique_valid(out, accepted)
    assert report.complete and report.accepted == accepted
    assert all(r.idx.startswith("ego-") for r in records)
    ego = set(load_conditions("ego").lines)
    assert all(r.extra["generation"]["condition"] in ego for r in records)
    assert all(FRAME_RANGE[0] <= len(r.frames) <= FRAME_RANGE[1] for r in records)

    # every broken response is counted under its reason and logged with its raw text
    assert report.rejected == Counter(REJECTED_KINDS.values())
    log = _rejection_log(out)
    assert Counter(entry["reason"] for entry in log) == report.rejected
    assert all(entry["details"] for entry in log)
    schema = next(entry for entry in log if entry["reason"] == "schema")
    assert any("QAs[0].options" in d for d in schema["details"])
    assert any("QAs[1].answer" in d for d in schema["details"])
    assert next(e for e in log if e["reason"] == "truncated")["finish_reason"] == "length"
    assert report.repaired == 2  # the fenced and the trailing-text responses

    # each 429/5xx was retried; the server saw every try
    assert report.retries == server.served["429"] + server.served["500"] + server.served["503"] == 3
    assert server.requests == report.requests + report.retries == len(script)
    assert report.prompt_tokens == server.prompt_tokens and report.completion_tokens == server.completion_tokens
    assert 2 <= server.max_in_flight <= 3

    body = server.bodies[0]
    assert body["temperature"] == 0.7 and body["max_tokens"] == 999 and body["model"] == "stub-model"
    assert body["response_format"] == {"type": "json_object"} and isinstance(body["seed"], int)
    assert any(condition in body["messages"][1]["content"] for condition in ego)
    assert "tokens: prompt" in report.summary() and "duplicate" in report.summary()


def test_retry_after_honoured_and_backoff_doubles(tmp_path):
    sleeps: list[float] = []
    with StubOpenAIServer(["429", "valid"], retry_after="7") as server:
        report = generate(_backend(server), _options(tmp_path, 1, concurrency=1), progress=False, sleep=sleeps.append)
    assert report.complete and server.requests == 2
    assert len(sleeps) == 1 and 7.0 <= sleeps[0] <= 7.0 * 1.25

    sleeps.clear()
    with StubOpenAIServer(["500"]) as server:
        report = generate(_backend(server), _options(tmp_path / "b", 1, concurrency=1, max_attempts=3, max_requests=2,
                                                     backoff=0.5), progress=False, sleep=sleeps.append)
    assert not report.complete
    assert report.rejected == Counter({"request_failed": 2}) and report.retries == 4
    assert server.requests == 6
    assert [round(s // 0.5) for s in sleeps] == [1, 2, 1, 2]  # 0.5 then 1.0 s, each plus < 25% jitter
    assert all("gave up after 3 attempts" in e["details"][0] for e in _rejection_log(tmp_path / "b" / "tideos.jsonl"))


def test_fatal_http_error_stops_at_once(tmp_path):
    with StubOpenAIServer(["401"]) as server, pytest.raises(BackendError, match="HTTP 401"):
        generate(_backend(server), _options(tmp_path, 5, concurrency=1), progress=False)
    assert server.requests == 1


def _cli(out: Path, url: str, num: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "topa_plugin.cli", "textvid", "generate", "--out", str(out), "--num", str(num),
            "--base-url", url, "--model", "stub-model", "--concurrency", "2", "--backoff", "0.001",
            "--no-progress", *extra]


def test_killed_run_resumes_to_exactly_n_unique_records(tmp_path):
    out = tmp_path / "tideos.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "OMP_NUM_THREADS": "1"}
    num = 16
    with StubOpenAIServer(["valid", "invalid", "valid", "429", "duplicate", "valid"], delay=0.1) as server:
        proc = subprocess.Popen(_cli(out, server.url, num), env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 4):
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        before = out.read_bytes()
        n_before = before.count(b"\n")
        assert 4 <= n_before < num
        with open(out, "ab") as f:  # what a kill in the middle of a write leaves behind
            f.write(b'{"idx": "howto-0000", "frames": [{"frame_caption": "a ki')

        done = subprocess.run(_cli(out, server.url, num), env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert "cut off an incomplete last line" in done.stderr
        assert f"{num} of {num} records" in done.stdout
        requests_after_resume = server.requests

        again = subprocess.run(_cli(out, server.url, num), env=env, cwd=REPO, capture_output=True, text=True,
                               timeout=60)
        assert again.returncode == 0, again.stderr
        assert server.requests == requests_after_resume  # already complete: no request sent

    assert out.read_bytes().startswith(before)  # nothing written before the kill was lost or rewritten
    records = _assert_unique_valid(out, num)
    requests = [r.extra["generation"]["request"] for r in records]
    assert len(set(requests)) == num  # the resumed run continued the request counter
    assert sum(1 for _ in rejections_path(out).open()) >= 1


def test_last_line_missing_only_its_newline_is_kept(tmp_path):
    with StubOpenAIServer(["valid", "valid"]) as server:
        generate(_backend(server), _options(tmp_path, 2), progress=False)
        out = tmp_path / "tideos.jsonl"
        out.write_bytes(out.read_bytes().rstrip(b"\n"))
        report = generate(_backend(server), _options(tmp_path, 2), progress=False)
        assert server.requests == 2
    assert report.existing == 2 and report.complete
    assert any("added the missing newline" in r for r in report.file_repairs)
    _assert_unique_valid(out, 2)


def test_custom_source_file_and_prompt_template(tmp_path):
    source = tmp_path / "my titles.txt"
    source.write_text("How to juggle three balls\n\nHow to fold a paper crane\n", encoding="utf-8")
    conditions = load_conditions(str(source))
    assert conditions.tag == "my-titles"
    assert conditions.lines == ("How to juggle three balls", "How to fold a paper crane")
    # each pass over a list uses every condition once, in an order the seed decides
    howto = load_conditions("howto")
    first_pass = [howto.pick(0, j) for j in range(len(howto.lines))]
    assert sorted(first_pass) == sorted(howto.lines)
    assert sorted(howto.pick(0, j) for j in range(len(howto.lines), 2 * len(howto.lines))) == sorted(howto.lines)
    assert first_pass != [howto.pick(1, j) for j in range(len(howto.lines))]

    template = tmp_path / "prompt.txt"
    template.write_text("CUSTOM $min_frames-$max_frames frames about: $condition. Cost: $$5", encoding="utf-8")
    with StubOpenAIServer(["valid"]) as server:
        report = generate(_backend(server), _options(tmp_path, 1, source=str(source), prompt_template=template),
                          progress=False)
        user = server.bodies[0]["messages"][1]["content"]
    assert report.complete
    assert user.startswith(f"CUSTOM {FRAME_RANGE[0]}-{FRAME_RANGE[1]} frames about: How to") and user.endswith("$5")
    assert read_textvid(tmp_path / "tideos.jsonl")[0].idx.startswith("my-titles-")

    template.write_text("Describe $topic", encoding="utf-8")
    with pytest.raises(GenerationError, match=r"prompt\.txt: unknown placeholder \$topic"):
        load_prompt("file", template)
    template.write_text("Describe a video", encoding="utf-8")
    with pytest.raises(GenerationError, match="neither \\$condition nor"):
        load_prompt("file", template)
    with pytest.raises(GenerationError, match="neither one of howto"):
        load_conditions(str(tmp_path / "missing.txt"))


def test_cli_errors_name_the_problem(tmp_path, monkeypatch, capsys):
    from topa_plugin.cli import main as topa

    def main(argv):
        return topa(["textvid", "generate", *argv])

    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["--out", str(tmp_path / "x.jsonl"), "--num", "1"]) == 2
    assert "set the environment variable OPENAI_API_KEY" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x.jsonl"), "--num", "1", "--api-key-env", "MY_KEY",
                 "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "MY_KEY" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x.json"), "--num", "1", "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "expected a .jsonl file" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x.jsonl"), "--num", "0"]) == 2
    assert "--num must be at least 1" in capsys.readouterr().err


def test_missing_openai_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(BackendError, match=r"topa-plugin\[generate\]"):
        make_backend("openai", "gpt-4o-mini")


def test_hf_backend_toy_llama_garbage_is_rejected_and_counted(tmp_path, toy_llama_dir):
    backend = HFBackend(str(toy_llama_dir), device="cpu")
    report = generate(backend, _options(tmp_path, 2, max_requests=3, max_tokens=12, concurrency=4),
                      progress=False)
    assert not report.complete and report.accepted == 0 and report.requests == 3
    assert sum(report.rejected.values()) == 3
    assert set(report.rejected) <= {"invalid_json", "truncated", "empty_response", "schema"}
    log = _rejection_log(tmp_path / "tideos.jsonl")
    assert [e["request"] for e in log] == [0, 1, 2] and all(e["details"] for e in log)
    assert 0 < report.completion_tokens <= 3 * 12 and report.prompt_tokens > 3 * 100
    assert (tmp_path / "tideos.jsonl").read_bytes() == b""


def test_hf_chat_template_used_and_system_turn_merged_when_refused(toy_llama_dir):
    backend = HFBackend(str(toy_llama_dir), device="cpu")
    messages = [{"role": "system", "content": "SYSTEM TEXT"}, {"role": "user", "content": "USER TEXT"}]
    plain = backend.tokenizer.decode(backend._encode(messages)[0], skip_special_tokens=True)
    assert plain.startswith("SYSTEM TEXT") and "USER TEXT" in plain

    backend.tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>")
    merged = backend.tokenizer.decode(backend._encode(messages)[0], skip_special_tokens=True)
    assert merged.startswith("<user>SYSTEM TEXT") and merged.endswith("USER TEXT<assistant>")
    completion = backend.complete(messages, temperature=0.0, max_tokens=4, seed=0)
    assert completion.completion_tokens <= 4 and completion.prompt_tokens == backend._encode(messages).shape[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_server_stops_after_a_few_unreachable_requests(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens: every connection is refused
    options = _options(tmp_path, num=500, concurrency=2, max_attempts=2)
    waits = []
    with pytest.raises(BackendError, match=rf"3 requests in a row could not connect.*{url}.*is the server running"):
        generate(OpenAIBackend("stub-model", base_url=url, timeout=5), options, progress=False, sleep=waits.append)
    failed = _rejection_log(options.out)
    assert 3 <= len(failed) <= 3 + options.concurrency  # not the 1510 requests of the budget
    assert {e["reason"] for e in failed} == {"request_failed"}


def test_connection_failures_not_in_a_row_do_not_stop_the_run(tmp_path):
    from topa_plugin.textvid.backends import Completion, ConnectionFailure

    class Flaky:
        name, model, max_concurrency = "flaky", "m", 1
        calls = 0

        def complete(self, messages, *, temperature, max_tokens, seed):
            Flaky.calls += 1
            if Flaky.calls % 3:
                raise ConnectionFailure("connection to flaky failed")
            return Completion("not json", 1, 1, "stop")

    report = generate(Flaky(), _options(tmp_path, num=2, max_attempts=1, max_requests=9), progress=False)
    assert report.requests == 9 and not report.complete
    assert report.rejected == Counter({"request_failed": 6, "invalid_json": 3})
