"""The HTTP client for the Qolaba image API: one pooled connection set, failures translated to QolabaError."""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx2
from pydantic import SecretStr, ValidationError

from ._errors import (
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    MissingApiKeyError,
    NetworkError,
    QolabaError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    TaskNotFoundError,
)
from ._models import GenerateRequest, GenerateResult, Task, TaskCreated

log = logging.getLogger("qolaba_mcp.client")

GENERATE_PATH = "/api/v1/images/generate"
_TASK_ID = re.compile(r'"task_id"\s*:\s*"([A-Za-z0-9_.:\-]{4,200})"')
TASK_PATH = "/api/v1/tasks/{task_id}"
_USER_AGENT = "qolaba-mcp"


class QolabaClient:
    """Async client for ``POST /api/v1/images/generate`` and ``GET /api/v1/tasks/{id}``."""

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
        self._request_timeout = httpx2.Timeout(request_timeout, connect=connect_timeout)
        self._sync_timeout = httpx2.Timeout(sync_timeout, connect=connect_timeout)
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
                timeout=self._request_timeout,
                transport=self._transport,
                headers={"User-Agent": _USER_AGENT, "Accept": "application/json"},
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

        ``timeout`` shortens the wait for the answer (never lengthens it). A success status whose body is broken
        but still names the task gives that task rather than an error: the task exists and is paid for.
        """
        limit = self._request_timeout if request.celery else self._sync_timeout
        if timeout is not None and limit.read is not None and timeout < limit.read:
            limit = httpx2.Timeout(timeout, connect=min(timeout, limit.connect or timeout))
        response = await self._send("POST", GENERATE_PATH, json_body=request.to_api(), api_key=api_key, timeout=limit)
        try:
            body = _json_object(response)
        except ResponseFormatError:
            salvaged = _TASK_ID.search(response.text)
            if salvaged is None:
                raise
            log.warning(
                "unreadable %s answer to a submission names task %s: following it",
                response.status_code,
                salvaged[1],
            )
            return TaskCreated(task_id=salvaged[1])
        try:
            if response.status_code == 202 or ("status" in body and not body.get("images") and "usage" not in body):
                return TaskCreated.model_validate(body)
            return GenerateResult.model_validate(body)
        except ValidationError as exc:
            raise ResponseFormatError(
                f"The generate response ({response.status_code}) lacks a usable task_id or images"
            ) from exc

    async def get_task(self, task_id: str, *, api_key: SecretStr | None = None) -> Task:
        """Poll one task; the body's shape is normalised by ``Task.from_api``."""
        path = TASK_PATH.format(task_id=quote(task_id, safe=""))
        response = await self._send("GET", path, api_key=api_key, timeout=self._request_timeout)
        try:
            return Task.from_api(_json_object(response), task_id=task_id)
        except (ValueError, ValidationError) as exc:
            raise ResponseFormatError(f"The task response for {task_id} is not a task: {exc}") from exc

    def _auth_headers(self, api_key: SecretStr | None) -> dict[str, str]:
        key = api_key or self._api_key
        value = key.get_secret_value().strip() if key else ""
        if not value:
            raise MissingApiKeyError(
                "No Qolaba API key is configured: set the QOLABA_API_KEY environment variable "
                "(or point QOLABA_API_BASE_URL at the sandbox, which accepts any key)."
            )
        return {"X-API-Key": value, "Authorization": f"Bearer {value}"}

    async def _send(
        self,
        method: str,
        path: str,
        *,
        api_key: SecretStr | None,
        timeout: httpx2.Timeout,
        json_body: Mapping[str, Any] | None = None,
    ) -> httpx2.Response:
        headers = self._auth_headers(api_key)
        started = time.monotonic()
        try:
            response = await self._http.request(method, path, json=json_body, headers=headers, timeout=timeout)
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
        log.debug("%s %s -> %s in %.3f s", method, path, response.status_code, time.monotonic() - started)
        if response.status_code >= 400:
            raise _status_error(response, method, path)
        return response


def _json_object(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResponseFormatError(
            f"The Qolaba API answered {response.status_code} with a body that is not valid JSON"
        ) from exc
    if not isinstance(body, dict):
        raise ResponseFormatError(f"The Qolaba API answered {response.status_code} with JSON that is not an object")
    return body


def _status_error(response: httpx2.Response, method: str, path: str) -> QolabaError:
    status = response.status_code
    try:
        body: object = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = response.text[:500]
    detail = _api_message(body) or response.reason_phrase or "no message"
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
            value = "; ".join(str(v.get("msg", v)) if isinstance(v, Mapping) else str(v) for v in value)
        elif isinstance(value, Mapping):
            value = value.get("message") or json.dumps(value)
        if isinstance(value, str) and value.strip() and value.strip() not in parts:
            parts.append(value.strip())
    # "error" is often just the status phrase ("Bad Request"): put the specific message first.
    return " - ".join(parts) if parts else None


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
