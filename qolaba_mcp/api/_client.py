"""The HTTP client for the Qolaba image API: one pooled connection set, failures translated to QolabaError."""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import anyio
import httpx2
from pydantic import SecretStr

from .._errors import (
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidTaskIdError,
    MissingApiKeyError,
    NetworkError,
    QolabaError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    TaskNotFoundError,
)
from ._wire import MAX_API_TEXT, GenerateRequest, GenerateResult, Task, TaskCreated, is_safe_task_id

log = logging.getLogger("qolaba_mcp.client")

GENERATE_PATH = "/api/v1/images/generate"
# What a scan of an unreadable answer steps through: a whole string, a number, a structural character, or a quote
# that opens a string cut off by the end of the answer.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[{}\[\]:,]|"')
TASK_ID_SCAN_BYTES = 1024 * 1024
"""How much of an unreadable submission answer is scanned for a top-level task_id (200,000 levels of nesting fit)."""
TASK_PATH = "/api/v1/tasks/{task_id}"
MODELS_PATH = "/api/v1/images/models"
_USER_AGENT = "qolaba-mcp"

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""Largest API answer read (a task or result is a few kB): more is a malformed answer, never held in memory."""
_MAX_ERROR_BODY = 64 * 1024  # an error answer is read only for its message
_MIN_SECRET = 8  # shorter "keys" (tests, sandboxes) would redact ordinary words
_REDACTED = "[redacted]"


class QolabaClient:
    """Async client for ``POST /api/v1/images/generate`` and ``GET /api/v1/tasks/{id}``.

    Every exchange runs under an overall deadline (connect, send, headers and the whole body), so an API that
    trickles its answer a byte at a time cannot stretch a call; bodies are read up to ``MAX_RESPONSE_BYTES``.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: SecretStr | str | None,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        sync_timeout: float = 120.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self._request_timeout = request_timeout
        self._sync_timeout = sync_timeout
        self._connect_timeout = connect_timeout
        self.base_url = base_url.rstrip("/")
        self._transport = transport
        self._pool: httpx2.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"QolabaClient(base_url={self.base_url!r}, api_key={'set' if self._api_key else 'unset'})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    @property
    def _http(self) -> httpx2.AsyncClient:
        """The process's one connection pool, made on first use: building it (TLS context) is slow for start-up."""
        if self._pool is None:
            self._pool = httpx2.AsyncClient(
                base_url=self.base_url,
                timeout=httpx2.Timeout(self._request_timeout, connect=self._connect_timeout),
                transport=self._transport,
                # identity: a compressed answer would be inflated before our byte cap could see it
                headers={"User-Agent": _USER_AGENT, "Accept": "application/json", "Accept-Encoding": "identity"},
                limits=httpx2.Limits(max_connections=100, max_keepalive_connections=20),
                follow_redirects=False,
            )
        return self._pool

    async def generate(
        self,
        request: GenerateRequest,
        *,
        api_key: SecretStr | None = None,
        timeout: float | None = None,
    ) -> GenerateResult | TaskCreated:
        """Submit a generation: a finished result (sync, 200) or the created task (async, 202).

        The whole exchange is bounded by the request timeout (async) or the sync timeout (sync); ``timeout``
        shortens that bound, never lengthens it. A success status whose body is broken but still names the task
        gives that task rather than an error: the task exists and is paid for.
        """
        limit = self._request_timeout if request.celery else self._sync_timeout
        limit = min(limit, timeout) if timeout is not None else limit
        status, data, complete = await self._send(
            "POST", GENERATE_PATH, json_body=request.to_api(), api_key=api_key, timeout=limit
        )
        try:
            body = _json_object(status, data, complete, self._secrets(api_key))
            if status == 202 or (_has_status(body) and not _has_result(body)):
                return TaskCreated.from_api(body)
            return GenerateResult.from_api(body)
        except (ResponseFormatError, ValueError) as exc:
            salvaged = top_level_task_id(data[:TASK_ID_SCAN_BYTES])
            if salvaged is None or not is_safe_task_id(salvaged):
                # A 2xx: the API took the request, so it may have made (and charged) a task nobody can name.
                why = exc.message if isinstance(exc, ResponseFormatError) else f"it lacks a usable task_id ({exc})"
                raise ResponseFormatError(
                    f"{why[:300]}. The request may have been accepted and charged: do not resubmit blindly. Check the "
                    "Qolaba dashboard for a task made just now before calling generate_image again."
                ) from exc
            log.warning("unreadable %s answer to a submission names task %s: following it", status, salvaged)
            return TaskCreated(task_id=salvaged)

    async def get_task(self, task_id: str, *, api_key: SecretStr | None = None, timeout: float | None = None) -> Task:
        """Poll one task; the body's shape is normalised by ``Task.from_api``.

        The whole exchange is bounded by the request timeout, or ``timeout`` where that is shorter. A task id that
        would change the request's path (only dots, a slash, a query...) is refused before any request.
        """
        if not is_safe_task_id(task_id):
            raise InvalidTaskIdError(
                f"{task_id[:80]!r} is not a task id: ids are 1-200 letters, digits, '_', '-', '.' or ':', and not "
                "only dots; nothing was sent"
            )
        path = TASK_PATH.format(task_id=quote(task_id, safe=""))
        limit = min(self._request_timeout, timeout) if timeout is not None else self._request_timeout
        try:
            status, data, complete = await self._send("GET", path, api_key=api_key, timeout=limit)
        except ServerError as exc:
            # The backend answers a FAILED task with a 500 that carries the task: final, not a hiccup to retry.
            failed = _failed_task(exc.body, task_id)
            if failed is None:
                raise
            return failed
        body = _json_object(status, data, complete, self._secrets(api_key))
        try:
            return Task.from_api(body, task_id=task_id)
        except (ValueError, RecursionError) as exc:
            raise ResponseFormatError(f"The task response for {task_id} is not a task: {exc}") from exc

    async def list_models(
        self, *, api_key: SecretStr | None = None, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """The raw entries of ``GET /api/v1/images/models`` (``{"models": [...]}``), objects only.

        Bounded like ``get_task``: the request timeout (or a shorter ``timeout``) and ``MAX_RESPONSE_BYTES``.
        """
        limit = min(self._request_timeout, timeout) if timeout is not None else self._request_timeout
        status, data, complete = await self._send("GET", MODELS_PATH, api_key=api_key, timeout=limit)
        models = _json_object(status, data, complete, self._secrets(api_key)).get("models")
        if not isinstance(models, list):
            raise ResponseFormatError(f'The model list ({status}) has no "models" list')
        return [entry for entry in models if isinstance(entry, dict)]

    def _auth_headers(self, api_key: SecretStr | None) -> dict[str, str]:
        value = self._key_value(api_key)
        if not value:
            raise MissingApiKeyError(
                "No Qolaba API key is configured: set your Qolaba API key in the extension's settings (Claude "
                "Desktop) or the QOLABA_API_KEY environment variable (or use the sandbox, which accepts any key)."
            )
        if not (value.isascii() and value.isprintable()):
            where = "The Qolaba API key given for this request" if api_key else "QOLABA_API_KEY"
            raise MissingApiKeyError(
                f"{where} holds characters an HTTP header cannot carry (a key is printable ASCII): copy the key "
                "again from the Qolaba dashboard."
            )
        return {"X-API-Key": value, "Authorization": f"Bearer {value}"}

    def key_in_use(self, api_key: SecretStr | None) -> str:
        """The key a request with this per-call key sends: its own, else the configured one ("" for none)."""
        return self._key_value(api_key)

    def _key_value(self, api_key: SecretStr | None) -> str:
        key = api_key or self._api_key
        return key.get_secret_value().strip() if key else ""

    def _secrets(self, api_key: SecretStr | None) -> list[str]:
        """The key values to redact from anything the API says: the configured key and this request's own."""
        keys = {self._key_value(None), self._key_value(api_key)}
        return [key for key in keys if len(key) >= _MIN_SECRET]

    async def _send(
        self,
        method: str,
        path: str,
        *,
        api_key: SecretStr | None,
        timeout: float,
        json_body: Mapping[str, Any] | None = None,
    ) -> tuple[int, bytes, bool]:
        """One exchange under an overall deadline: the 2xx status, the body (at most the cap) and whether it is whole.

        An error status is raised as its QolabaError, with the API's message redacted and cut short.
        """
        headers = self._auth_headers(api_key)
        per_read = httpx2.Timeout(timeout, connect=min(timeout, self._connect_timeout))
        started = time.monotonic()
        try:
            with anyio.fail_after(timeout):
                async with self._http.stream(
                    method, path, json=json_body, headers=headers, timeout=per_read
                ) as response:
                    cap = MAX_RESPONSE_BYTES if response.status_code < 400 else _MAX_ERROR_BODY
                    data, complete = await _read_capped(response, cap)
        except httpx2.TimeoutException as exc:
            sent = not isinstance(exc, httpx2.ConnectTimeout | httpx2.PoolTimeout)
            raise APITimeoutError(
                f"{method} {path}: no answer from the Qolaba API in time ({type(exc).__name__})",
                request_sent=sent,
            ) from exc
        except httpx2.TransportError as exc:
            sent = not isinstance(exc, httpx2.ConnectError | httpx2.UnsupportedProtocol)
            raise NetworkError(
                f"{method} {path}: network error talking to the Qolaba API ({type(exc).__name__})",
                request_sent=sent,
            ) from exc
        except TimeoutError as exc:
            # The overall deadline: the API may have seen the request, so a submission is never resent.
            raise APITimeoutError(
                f"{method} {path}: no complete answer from the Qolaba API within {timeout:g} s", request_sent=True
            ) from exc
        log.debug("%s %s -> %s in %.3f s", method, path, response.status_code, time.monotonic() - started)
        if response.status_code >= 400:
            raise _status_error(response, data, method, path, self._secrets(api_key))
        return response.status_code, data, complete


async def _read_capped(response: httpx2.Response, cap: int) -> tuple[bytes, bool]:
    """The body (decoded from any content-encoding) up to ``cap`` bytes, and whether that was all of it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap], False
    return b"".join(chunks), True


def top_level_task_id(data: bytes) -> str | None:
    """The ``task_id`` (a string, or an integer as text) of the top-level object in ``data``, read by stepping
    through its tokens without parsing: for answers a parser refuses (nested too deeply, cut off, garbled after
    the id). A ``task_id`` inside a nested value is never taken: it may name something else."""
    depth = 0
    expect = "key"  # at depth 1: "key", then "colon", then "value", then "comma"
    named = False  # the last key at depth 1 was "task_id"
    for match in _JSON_TOKEN.finditer(data):
        token = match.group()
        if token == b'"':
            return None  # a string cut off by the end: nothing after it can be read (and rescanning it costs)
        if token in (b"{", b"["):
            if depth == 0 and token == b"[":
                return None  # not an object
            if depth == 1:
                expect = "comma"  # a nested value: stepped over (its depth says when it ends)
            depth += 1
        elif token in (b"}", b"]"):
            depth -= 1
            if depth <= 0:
                return None  # the top-level object ended without one
        elif depth != 1:
            continue
        elif token == b",":
            expect = "key"
        elif token == b":":
            expect = "value" if expect == "colon" else "comma"
        elif expect == "key":
            named, expect = token == b'"task_id"', "colon"  # (a key spelt with escapes is not worth decoding)
        elif expect == "value":
            expect = "comma"
            if named:
                value = _json_scalar(token)
                return str(value).strip() or None if isinstance(value, str | int) else None
    return None


def _json_scalar(token: bytes) -> object:
    try:
        return json.loads(token)
    except ValueError:  # a cut-off string, a bad escape
        return None


def _failed_task(body: object, task_id: str) -> Task | None:
    """The FAILED task an error answer's body describes, if it describes one (of this id, or of none)."""
    if not isinstance(body, Mapping):
        return None
    try:
        task = Task.from_api(body, task_id=task_id)
    except (ValueError, RecursionError):
        return None
    return task if task.status == "FAILED" and task.task_id == task_id else None


def _has_status(body: Mapping[str, Any]) -> bool:
    inner = body.get("task")
    return any(isinstance(place, Mapping) and "status" in place for place in (body, inner))


def _has_result(body: Mapping[str, Any]) -> bool:
    inner = body.get("task")
    return any(
        isinstance(place, Mapping) and (place.get("images") or place.get("output") or "usage" in place)
        for place in (body, inner)
    )


def _json_object(status: int, data: bytes, complete: bool, secrets: list[str]) -> dict[str, Any]:
    """The answer as a JSON object with the key redacted; ResponseFormatError for anything else."""
    if not complete:
        raise ResponseFormatError(
            f"The Qolaba API answered {status} with a body over {MAX_RESPONSE_BYTES} bytes; it was not read"
        )
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser goes
        raise ResponseFormatError(f"The Qolaba API answered {status} with a body that is not valid JSON") from exc
    if not isinstance(body, dict):
        raise ResponseFormatError(f"The Qolaba API answered {status} with JSON that is not an object")
    try:
        return _redacted_json(body, secrets)
    except RecursionError as exc:
        raise ResponseFormatError(f"The Qolaba API answered {status} with JSON nested too deeply") from exc


def _redacted_json(body: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """The body with every string that holds a key value redacted (checked on the decoded text: escapes count)."""
    if not secrets or not any(secret in json.dumps(body, ensure_ascii=False) for secret in secrets):
        return body

    def scrub(value: object) -> object:
        if isinstance(value, str):
            return redact(value, secrets)
        if isinstance(value, list):
            return [scrub(item) for item in value]
        if isinstance(value, dict):
            return {redact(str(key), secrets): scrub(item) for key, item in value.items()}
        return value

    return scrub(body)  # type: ignore[return-value]


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each key value replaced by a marker."""
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return text


def api_text(text: str, secrets: Iterable[str]) -> str:
    """Text from the API as it may reach a message or a log line: key redacted, at most MAX_API_TEXT characters."""
    text = redact(text, secrets).strip()
    return text if len(text) <= MAX_API_TEXT else text[: MAX_API_TEXT - 1] + "…"


def _status_error(response: httpx2.Response, data: bytes, method: str, path: str, secrets: list[str]) -> QolabaError:
    status = response.status_code
    text = data.decode("utf-8", "replace")
    try:
        body: object = _redacted_json(json.loads(text), secrets)
    except (ValueError, RecursionError):
        body = api_text(text, secrets)
    detail = api_text(_api_message(body) or response.reason_phrase or "no message", secrets)
    where = f"{method} {path}"
    if status in (400, 422):
        return BadRequestError(f"Bad request ({status}): {detail}", status_code=status, body=body)
    if status in (401, 403):
        return AuthenticationError(
            f"The Qolaba API refused the API key ({status}): {detail}", status_code=status, body=body
        )
    if status == 404:
        return TaskNotFoundError(f"Not found (404) at {where}: {detail}", status_code=status, body=body)
    if status == 429:
        retry_after = parse_retry_after(body, response.headers.get("Retry-After"))
        hint = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimitError(
            f"Rate limited by the Qolaba API (429): {detail}{hint}",
            body=body,
            retry_after=retry_after,
        )
    if status >= 500:
        return ServerError(f"Qolaba API server error ({status}) at {where}: {detail}", status_code=status, body=body)
    return APIStatusError(f"Unexpected status {status} at {where}: {detail}", status_code=status, body=body)


def _api_message(body: object) -> str | None:
    if isinstance(body, str):
        return body.strip() or None
    if not isinstance(body, Mapping):
        return None
    parts = []
    for key in ("message", "detail", "error_detail", "error"):
        value = body.get(key)
        if isinstance(value, list):
            value = "; ".join(_one_line(v.get("msg", v) if isinstance(v, Mapping) else v) for v in value[:10])
        elif isinstance(value, Mapping):
            value = _one_line(value.get("message") or value)
        if isinstance(value, str) and value.strip() and value.strip() not in parts:
            parts.append(value.strip())
    # "error" is often just the status phrase ("Bad Request"): put the specific message first.
    return " - ".join(parts) if parts else None


def _one_line(value: object) -> str:
    """A short text for one part of an error body, whatever its shape or depth."""
    if isinstance(value, str):
        return value[:MAX_API_TEXT]
    try:
        return json.dumps(value)[:MAX_API_TEXT]
    except (ValueError, TypeError, RecursionError):
        return type(value).__name__


def parse_retry_after(body: object, header: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait, from the JSON ``retryAfter``/``retry_after`` or a Retry-After header (seconds or date)."""
    if isinstance(body, Mapping):
        for key in ("retryAfter", "retry_after", "retry_after_seconds"):
            seconds = _seconds(body.get(key))
            if seconds is not None:
                return seconds
    if header:
        seconds = _seconds(header)
        if seconds is not None:
            return seconds
        try:
            when = email.utils.parsedate_to_datetime(header.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when is not None:
            current = time.time() if now is None else now
            return max(0.0, when.timestamp() - current)
    return None


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if 0 <= number < 86400 else None
