"""Chat backends for TextVid generation: any OpenAI-compatible endpoint, or a local HF model.

A backend turns chat messages into one ``Completion``. It raises ``TransientBackendError``
for failures worth retrying (rate limits, server errors, dropped connections; the caller
owns the backoff) and ``BackendError`` for failures that would repeat on every request
(bad key, unknown model, unsupported parameter), so a misconfigured run stops at once
instead of logging thousands of identical rejections.
"""

from __future__ import annotations

import email.utils
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from topa_plugin.utils.errors import TopaInputError, first_line

log = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# HTTP statuses that a later identical request can survive.
_RETRYABLE_STATUS = {408, 409, 429}


class BackendError(TopaInputError, RuntimeError):
    """A failure that retrying will not fix; generation stops."""


class TransientBackendError(RuntimeError):
    """A failure worth retrying; ``retry_after`` is the server's requested wait in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ConnectionFailure(TransientBackendError):
    """The server could not be reached at all (refused, unresolvable, timed out): retried, but a run stops
    after a few requests in a row fail this way, since a dead endpoint would otherwise be retried for hours."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None  # "stop", "length", ... as the server reports it


class Backend(Protocol):
    name: str
    model: str
    max_concurrency: int | None  # None: no limit beyond --concurrency

    def complete(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int,
                 seed: int) -> Completion: ...


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            log.warning("ignoring malformed retry-after-ms header %r", value)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        log.warning("ignoring malformed retry-after header %r", value)
        return None
    return max(0.0, when.timestamp() - time.time())


def _import_openai():
    try:
        import openai
    except ImportError as e:
        raise BackendError(
            "the openai backend needs the `openai` package: pip install 'topa-plugin[generate]'"
        ) from e
    return openai


class OpenAIBackend:
    """Chat completions through the ``openai`` client: OpenAI, vLLM, SGLang, Ollama, Gemini, ..."""

    name = "openai"
    max_concurrency = None

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str | None = None,
                 timeout: float = 300.0, json_mode: bool = True):
        openai = _import_openai()
        self._openai = openai
        self.model = model
        self.base_url = base_url
        self.json_mode = json_mode
        self._token_param = "max_tokens"
        env = api_key_env or DEFAULT_API_KEY_ENV
        key = os.environ.get(env)
        if not key:
            if api_key_env is None and base_url:
                # Local servers (vLLM, Ollama) accept any key unless started with one.
                log.info("%s is not set; sending a placeholder key to %s", env, base_url)
                key = "EMPTY"
            else:
                raise BackendError(f"no API key: set the environment variable {env}"
                                   + ("" if api_key_env else " (or name another with --api-key-env)"))
        # The client's own retries are off: the generator retries with its own backoff and counts them.
        self.client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)

    def _where(self) -> str:
        return f"{self.base_url or 'the OpenAI API'} (model {self.model!r})"

    def complete(self, messages, *, temperature, max_tokens, seed):
        openai = self._openai
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature,
                                  "seed": seed, self._token_param: max_tokens}
        if self.json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        try:
            response = self.client.chat.completions.create(**kwargs)
        except openai.APIStatusError as e:
            status = e.status_code
            if status in _RETRYABLE_STATUS or status >= 500:
                raise TransientBackendError(f"HTTP {status}: {e.message}",
                                            parse_retry_after(e.response.headers)) from e
            if status == 400 and self._token_param == "max_tokens" and "max_completion_tokens" in str(e.message):
                # Newer OpenAI models reject max_tokens; switch once and retry at once.
                log.info("%s wants max_completion_tokens instead of max_tokens; switching", self._where())
                self._token_param = "max_completion_tokens"
                return self.complete(messages, temperature=temperature, max_tokens=max_tokens, seed=seed)
            hint = ""
            if status == 400 and self.json_mode and "response_format" in str(e.message):
                hint = " (this server does not support JSON mode: rerun with --no-json-mode)"
            raise BackendError(f"{self._where()} answered HTTP {status}: {e.message}{hint}") from e
        except openai.APIConnectionError as e:  # includes timeouts
            raise ConnectionFailure(f"connection to {self.base_url or 'the OpenAI API'} failed: {e}") from e
        except openai.APIError as e:  # e.g. a 200 whose body is not a chat completion
            raise BackendError(f"{self._where()}: unusable response: {e}") from e
        usage = response.usage
        if not response.choices:
            return Completion("", getattr(usage, "prompt_tokens", 0) or 0,
                              getattr(usage, "completion_tokens", 0) or 0, None)
        choice = response.choices[0]
        return Completion(
            text=choice.message.content or "",
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
            finish_reason=choice.finish_reason,
        )


class HFBackend:
    """A local transformers causal LM, prompted through its chat template when it has one.

    One generation at a time: the model is shared and sampling is seeded through torch's
    global generator, so requests are serialised behind a lock.
    """

    name = "hf"
    max_concurrency = 1

    def __init__(self, model: str, *, device: str | None = None, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.model = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise BackendError(f"--model {model}: cannot load it as a local transformers model ({first_line(e)})") from e
        self.max_positions = getattr(self.lm.config, "max_position_embeddings", None)
        self._lock = threading.Lock()
        if not getattr(self.tokenizer, "chat_template", None):
            log.info("%s has no chat template; prompting with the plain system and user text", model)

    def _encode(self, messages: list[dict[str, str]]):
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            from jinja2.exceptions import TemplateError

            try:
                return tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                               return_tensors="pt")["input_ids"]
            except TemplateError as e:  # some templates (Gemma) refuse a system turn
                if messages[0]["role"] != "system" or "system" not in str(e).lower():
                    raise
                merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]},
                          *messages[2:]]
                return tok.apply_chat_template(merged, add_generation_prompt=True, return_dict=True,
                                               return_tensors="pt")["input_ids"]
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        return tok(text, return_tensors="pt")["input_ids"]

    def complete(self, messages, *, temperature, max_tokens, seed):
        torch = self._torch
        input_ids = self._encode(messages)
        n_prompt = input_ids.shape[1]
        if self.max_positions is not None and n_prompt + max_tokens > self.max_positions:
            raise BackendError(f"{self.model}: prompt ({n_prompt} tokens) + --max-tokens {max_tokens} exceeds "
                               f"the model's {self.max_positions} positions")
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with self._lock, torch.inference_mode():
            torch.manual_seed(seed)
            input_ids = input_ids.to(self.device)
            output = self.lm.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_tokens,
                                      pad_token_id=pad, **sampling)
        new = output[0, n_prompt:].tolist()
        ended = bool(new) and new[-1] == tok.eos_token_id
        return Completion(
            text=tok.decode(new, skip_special_tokens=True),
            prompt_tokens=n_prompt,
            completion_tokens=len(new),
            finish_reason="stop" if ended or len(new) < max_tokens else "length",
        )


def make_backend(name: str, model: str, *, base_url: str | None = None, api_key_env: str | None = None,
                 timeout: float = 300.0, json_mode: bool = True, device: str | None = None) -> Backend:
    """The backend called ``name`` ("openai" or "hf")."""
    if name == "openai":
        return OpenAIBackend(model, base_url=base_url, api_key_env=api_key_env, timeout=timeout, json_mode=json_mode)
    if name == "hf":
        if base_url:
            raise BackendError("--base-url is for the openai backend; the hf backend loads --model locally")
        return HFBackend(model, device=device)
    raise BackendError(f"unknown backend {name!r}: expected 'openai' or 'hf'")
