"""A stand-in OpenAI-compatible chat server on 127.0.0.1 for the TextVid generation tests.

It answers ``POST /v1/chat/completions`` following a script of response kinds (cycled in
arrival order): well-formed Tideos, Tideos the one-shot repair fixes, broken and
schema-invalid ones, and HTTP errors. It counts what it served and shuts itself down
after ``lifetime`` seconds so a failed test cannot leave it running.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Kinds whose Tideo the generator must accept (after at most one local repair).
ACCEPTED_KINDS = ("valid", "fenced", "trailing")
# Kind -> rejection reason the generator must log.
REJECTED_KINDS = {
    "invalid": "invalid_json",
    "broken": "invalid_json",
    "truncated": "truncated",
    "schema": "schema",
    "few_frames": "frame_count",
    "extra_key": "unexpected_keys",
    "no_open_answer": "missing_open_answer",
    "empty": "empty_response",
    "duplicate": "duplicate",
}
# Kinds answered with an HTTP error; the generator retries them.
ERROR_STATUS = {"429": 429, "500": 500, "503": 503, "401": 401}


def tideo(serial: int, n_frames: int = 6) -> dict:
    """A schema-valid Tideo whose text is unique per serial number."""
    actions = ["picks up the kettle", "fills it with water", "switches it on", "takes a mug",
               "pours the water", "stirs the tea", "adds milk", "sips the tea"]
    frames = [
        {"frame_caption": f"In clip {serial}, a person {actions[i % len(actions)]} in a bright kitchen.",
         "kettle": f"A steel kettle, state {i} of clip {serial}.",
         "mug": f"A white mug seen at step {i}."}
        for i in range(n_frames)
    ]
    return {
        "frames": frames,
        "global_video_caption": f"Clip {serial}: a person makes tea, from filling the kettle to drinking it.",
        "QAs": [
            {"question": f"What does the person do right after filling the kettle in clip {serial}?",
             "options": ["Switches it on", "Drinks the tea", "Washes the mug", "Opens the fridge", "Leaves"],
             "answer": "A", "answer_open_ended": "The person switches the kettle on."},
            {"question": f"What is added last in clip {serial}?",
             "options": ["Sugar", "Lemon", "Milk", "Honey", "Ice"],
             "answer": "C", "answer_open_ended": "Milk is added last."},
        ],
    }


class StubOpenAIServer:
    """Usage: ``with StubOpenAIServer(["valid", "429"]) as server: ... server.url ...``."""

    def __init__(self, script: list[str], *, delay: float = 0.0, retry_after: str | None = "0",
                 lifetime: float = 120.0):
        unknown = [k for k in script if k not in ACCEPTED_KINDS and k not in REJECTED_KINDS and k not in ERROR_STATUS]
        if unknown:
            raise ValueError(f"unknown response kinds {unknown}")
        self.script = list(script)
        self.delay = delay
        self.retry_after = retry_after
        self.lifetime = lifetime
        self.requests = 0
        self.served = Counter()
        self.bodies: list[dict] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.max_in_flight = 0
        self._in_flight = 0
        self._serial = 0
        self._last_good: int | None = None
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -------------------------------------------------------------- lifecycle

    def __enter__(self) -> "StubOpenAIServer":
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        self.stop()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -------------------------------------------------------------- responses

    def _next(self, body: dict) -> tuple[str, int]:
        """(kind, serial) of the next response, counted under the lock."""
        with self._lock:
            kind = self.script[self.requests % len(self.script)]
            self.requests += 1
            self.served[kind] += 1
            self.bodies.append(body)
            if kind == "duplicate":
                if self._last_good is None:
                    raise ValueError("script serves 'duplicate' before any accepted kind")
                serial = self._last_good
            else:
                serial = self._serial
                self._serial += 1
                if kind in ACCEPTED_KINDS:
                    self._last_good = serial
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        return kind, serial

    def _content(self, kind: str, serial: int) -> tuple[str, str]:
        """(text, finish_reason) for a 200 response."""
        good = json.dumps(tideo(serial))
        if kind == "valid":
            return good, "stop"
        if kind == "fenced":
            return f"```json\n{good}\n```", "stop"
        if kind == "trailing":
            return f"Here is the video:\n{good}\nI hope this helps!", "stop"
        if kind == "invalid":
            return "Sure! The video shows a person making tea in a kitchen.", "stop"
        if kind == "broken":
            return '{"frames": [{"frame_caption": "a kitchen"} "global_video_caption": "tea"}', "stop"
        if kind == "truncated":
            return good[: len(good) // 2], "length"
        if kind == "duplicate":
            return good, "stop"
        if kind == "empty":
            return "", "stop"
        record = tideo(serial)
        if kind == "schema":
            record["QAs"][0]["options"] = record["QAs"][0]["options"][:4]
            record["QAs"][1]["answer"] = "F"
        elif kind == "few_frames":
            record["frames"] = record["frames"][:2]
        elif kind == "extra_key":
            record["title"] = "Making tea"
        elif kind == "no_open_answer":
            del record["QAs"][1]["answer_open_ended"]
        return json.dumps(record), "stop"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # keep test output clean
                return

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                kind, serial = server._next(body)
                try:
                    time.sleep(server.delay)
                    if kind in ERROR_STATUS:
                        status = ERROR_STATUS[kind]
                        headers = {"Retry-After": server.retry_after} if status == 429 and server.retry_after else {}
                        self._send(status, {"error": {"message": f"stub {kind}", "type": "stub", "code": None}},
                                   headers)
                        return
                    text, finish = server._content(kind, serial)
                    prompt_tokens = sum(len(m["content"]) for m in body["messages"]) // 4
                    completion_tokens = len(text) // 4 + 1
                    with server._lock:
                        server.prompt_tokens += prompt_tokens
                        server.completion_tokens += completion_tokens
                    self._send(200, {
                        "id": f"chatcmpl-{serial}", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model", "stub"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": finish, "logprobs": None}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens},
                    })
                finally:
                    with server._lock:
                        server._in_flight -= 1

        return Handler
