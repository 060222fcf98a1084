"""Narrow client cases through httpx2.MockTransport: headers sent, status mapping, Retry-After forms."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from qolaba_mcp._errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
)
from qolaba_mcp.api._client import QolabaClient, parse_retry_after
from qolaba_mcp.api._wire import GenerateRequest, GenerateResult, TaskCreated

pytestmark = pytest.mark.anyio
KEY = "sk-mock-7f3a9c"


def client(handler: Any) -> QolabaClient:
    return QolabaClient(base_url="https://api.test/", api_key=KEY, transport=httpx2.MockTransport(handler))


async def test_key_goes_in_both_headers_and_unset_fields_stay_out() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"task_id": "t", "images": [], "new_field": 1})

    async with client(handler) as c:
        result = await c.generate(GenerateRequest(model="m", prompt="p"))
    assert seen[0].headers["X-API-Key"] == KEY
    assert seen[0].headers["Authorization"] == f"Bearer {KEY}"
    assert seen[0].url == "https://api.test/api/v1/images/generate"
    assert seen[0].read() == b'{"model":"m","prompt":"p"}'
    assert isinstance(result, GenerateResult) and result.model_extra == {"new_field": 1}


async def test_task_created_detected_without_202() -> None:
    async with client(lambda r: httpx2.Response(200, json={"task_id": "t", "status": "PENDING"})) as c:
        assert isinstance(await c.generate(GenerateRequest(model="m", prompt="p", celery=True)), TaskCreated)


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (400, {"error": "Bad Request", "message": "prompt too long"}, BadRequestError, "prompt too long"),
        (422, {"detail": [{"msg": "field required"}]}, BadRequestError, "field required"),
        (401, {"error": "Unauthorized"}, AuthenticationError, "Unauthorized"),
        (403, "forbidden", AuthenticationError, "forbidden"),
        (500, {"error": "Internal Server Error"}, ServerError, "Internal Server Error"),
        (502, "<html>bad gateway</html>", ServerError, "bad gateway"),
        (418, {}, APIStatusError, "418"),
    ],
)
async def test_status_mapping(status: int, body: object, error: type[Exception], text: str) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if isinstance(body, str):
            return httpx2.Response(status, text=body)
        return httpx2.Response(status, json=body)

    async with client(handler) as c:
        with pytest.raises(error, match=text):
            await c.get_task("t1")


async def test_rate_limit_header_when_body_has_none() -> None:
    handler = lambda r: httpx2.Response(429, headers={"Retry-After": "3"}, json={"error": "Rate Limited"})  # noqa: E731
    async with client(handler) as c:
        with pytest.raises(RateLimitError) as caught:
            await c.get_task("t1")
    assert caught.value.retry_after == 3


@pytest.mark.parametrize(
    ("body", "header", "expected"),
    [
        ({"retryAfter": 5}, None, 5.0),
        ({"retry_after": "2.5"}, None, 2.5),
        ({"retryAfter": 5}, "9", 5.0),
        ({}, "9", 9.0),
        ("not json", "12", 12.0),
        ({}, "Thu, 26 Nov 2026 10:00:30 GMT", 30.0),
        ({}, "Thu, 26 Nov 2026 09:59:00 GMT", 0.0),
        ({}, "soon", None),
        ({"retryAfter": -1}, None, None),
        ({"retryAfter": True}, None, None),
        ({}, None, None),
    ],
)
def test_parse_retry_after(body: object, header: str | None, expected: float | None) -> None:
    now = 1795687200.0  # Thu, 26 Nov 2026 10:00:00 GMT
    assert parse_retry_after(body, header, now=now) == expected


@pytest.mark.parametrize("body", [b"[1, 2]", b"{nope", b'{"progress": 5}'])
async def test_unreadable_task_bodies(body: bytes) -> None:
    async with client(lambda r: httpx2.Response(200, content=body)) as c:
        with pytest.raises(ResponseFormatError):
            await c.get_task("t1")
