"""OAuth 2.1 on the HTTP transport, against a real authorization server (oidc-provider, tests/oauth/issuer.mjs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from qolaba_mcp.sandbox import SandboxServer

from .conftest import HttpServer, free_port, server_env

HERE = Path(__file__).parent / "oauth"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CAT = {"model": "vertex/nano-banana-flash", "prompt": "A cat", "wait_seconds": 10}


def _need_node() -> None:
    """Node and the pinned oidc-provider (npm ci), or a skip with the reason (a failure under CI=true)."""
    problem = None
    if shutil.which("node") is None or shutil.which("npm") is None:
        problem = "node/npm are not installed"
    elif not (HERE / "node_modules" / "oidc-provider").is_dir():
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, timeout=300)
        if done.returncode:
            problem = f"npm ci in tests/oauth failed: {done.stderr.decode(errors='replace')[-300:]}"
    if problem:
        if os.environ.get("CI") in ("true", "1"):
            pytest.fail(problem)
        pytest.skip(problem)


class Issuer:
    """tests/oauth/issuer.mjs in a subprocess: an authorization server for ``resource``."""

    def __init__(self, resource: str) -> None:
        _need_node()
        self.proc = subprocess.Popen(
            ["node", str(HERE / "issuer.mjs"), resource], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        self.url: str = json.loads(self.proc.stdout.readline())["issuer"]
        self.resource = resource

    def token(self, client: str, scope: str = "qolaba:read qolaba:generate") -> str:
        answer = httpx2.post(
            f"{self.url}/token",
            data={"grant_type": "client_credentials", "scope": scope, "resource": self.resource},
            auth=(client, f"{client}-secret"),
            timeout=10,
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])

    def signing_key(self) -> dict[str, Any]:
        return dict(httpx2.get(f"{self.url}/_signing_key", timeout=10).json())

    def rotate(self) -> str:
        return str(httpx2.post(f"{self.url}/_rotate", timeout=10).json()["kid"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _sandbox_at_its_defaults(sandbox: SandboxServer) -> None:
    """This module's servers use the worker's shared sandbox: each test starts from its defaults, whatever the
    test before it on this worker set (a long latency or a fault there would hold this test's generations)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("oauth")


@pytest.fixture(scope="module")
def setup(shared_sandbox: SandboxServer, files: Path) -> Iterator[tuple[Issuer, HttpServer]]:
    port = free_port()
    issuer = Issuer(f"http://127.0.0.1:{port}/mcp")
    server = HttpServer(
        server_env(
            shared_sandbox.base_url,
            QOLABA_LEDGER_URL=f"sqlite:///{files / 'ledger.db'}",
            QOLABA_OUTPUT_DIR=str(files / "images"),
            QOLABA_MCP_OAUTH_ISSUER=issuer.url,
            QOLABA_MCP_PUBLIC_URL=issuer.resource,
            QOLABA_MCP_OAUTH_INTROSPECTION_CLIENT_ID="introspector",
            QOLABA_MCP_OAUTH_INTROSPECTION_CLIENT_SECRET="introspector-secret",
            QOLABA_SAVE="on",
        ),
        "--log-level",
        "DEBUG",
        port=port,
    )
    yield issuer, server
    server.stop()
    issuer.stop()


def post(server: HttpServer, token: str | None, body: Any = INIT) -> httpx2.Response:
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx2.post(server.url, content=json.dumps(body).encode(), headers={**HEADERS, **auth}, timeout=10)


def forged(issuer: Issuer, *, alg: str = "RS256", key: Any = None, **claims: Any) -> str:
    """A token signed with the issuer's own current key (unless ``key``), with ``claims`` over good ones."""
    jwk = issuer.signing_key()
    now = int(time.time())
    good = {
        "iss": issuer.url,
        "sub": "mallory",
        "aud": issuer.resource,
        "iat": now,
        "exp": now + 300,
        "scope": "qolaba:read qolaba:generate",
    }
    body = {k: v for k, v in {**good, **claims}.items() if v is not None}
    signing = key if key is not None else jwt.PyJWK(jwk).key
    return jwt.encode(body, signing, algorithm=alg, headers={"kid": jwk["kid"]})


def test_metadata_document(setup: tuple[Issuer, HttpServer]) -> None:
    issuer, server = setup
    answer = httpx2.get(f"http://127.0.0.1:{server.port}/.well-known/oauth-protected-resource/mcp", timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {
        "resource": issuer.resource,
        "authorization_servers": [issuer.url],
        "scopes_supported": ["qolaba:read", "qolaba:generate"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Qolaba image generation (qolaba-mcp)",
    }


def test_a_bare_request_is_told_where_to_sign_in(setup: tuple[Issuer, HttpServer]) -> None:
    _, server = setup
    answer = post(server, None)
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="http://127.0.0.1:{server.port}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert 'scope="qolaba:read qolaba:generate"' in challenge


def _public_pem(issuer: Issuer) -> bytes:
    from cryptography.hazmat.primitives import serialization

    public = jwt.PyJWK(issuer.signing_key()).key.public_key()
    return bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


CASES: list[tuple[str, Any, int]] = [
    ("issuer's JWT (client credentials)", lambda i: i.token("alice"), 200),
    ("issuer's opaque token (introspection)", lambda i: i.token("opaque"), 200),
    ("expired 5 min ago", lambda i: forged(i, exp=int(time.time()) - 300), 401),
    ("not valid for 5 min (nbf)", lambda i: forged(i, nbf=int(time.time()) + 300), 401),
    ("wrong audience", lambda i: forged(i, aud="https://other.example/mcp"), 401),
    ("no audience", lambda i: forged(i, aud=None), 401),
    ("wrong issuer", lambda i: forged(i, iss="https://evil.example"), 401),
    (
        "alg none",
        lambda i: jwt.encode(
            {"iss": i.url, "sub": "m", "aud": i.resource, "exp": int(time.time()) + 300}, None, algorithm="none"
        ),
        401,
    ),
    ("HS256 keyed with the public key", lambda i: _hs256_with_public_key(i), 401),
    ("signed by a key the issuer never published", lambda i: forged(i, key=_stranger_key()), 401),
    ("garbage", lambda i: "not-a-token", 401),
]


def _stranger_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _hs256_with_public_key(issuer: Issuer) -> str:
    # PyJWT refuses to HMAC with a PEM key, as it should; the attack is built by hand, as an attacker would.
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    kid = issuer.signing_key()["kid"]
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    claims = {
        "iss": issuer.url,
        "sub": "m",
        "aud": issuer.resource,
        "exp": int(time.time()) + 300,
        "scope": "qolaba:read qolaba:generate",
    }
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(_public_pem(issuer), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


@pytest.mark.parametrize(("case", "make", "status"), CASES, ids=[c[0] for c in CASES])
def test_tokens(setup: tuple[Issuer, HttpServer], case: str, make: Any, status: int) -> None:
    issuer, server = setup
    answer = post(server, make(issuer))
    assert answer.status_code == status, answer.text
    if status == 401:
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def test_key_rotation(setup: tuple[Issuer, HttpServer]) -> None:
    issuer, server = setup
    assert post(server, issuer.token("alice")).status_code == 200  # the first key, cached
    kid = issuer.rotate()
    token = issuer.token("alice")
    assert jwt.get_unverified_header(token)["kid"] == kid
    assert post(server, token).status_code == 200  # an unknown kid: the keys are fetched again


def test_a_token_without_the_scope_to_spend(setup: tuple[Issuer, HttpServer]) -> None:
    issuer, server = setup
    token = issuer.token("reader", "qolaba:read")
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "generate_image", "arguments": CAT}}
    answer = post(server, token, call)
    assert answer.status_code == 403
    challenge = answer.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="qolaba:generate"' in challenge
    assert answer.json()["id"] == 7 and "qolaba:generate" in answer.json()["error"]["message"]
    listing = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "list_models", "arguments": {}}}
    assert post(server, token, listing).status_code != 403


async def _session(url: str, token: str) -> tuple[httpx2.AsyncClient, Any]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=60))
    return http, Client(streamable_http_client(url, http_client=http))


@pytest.mark.anyio
async def test_two_people_two_histories(setup: tuple[Issuer, HttpServer], files: Path) -> None:
    issuer, server = setup
    alice, bob = issuer.token("alice"), issuer.token("bob")
    http, client = await _session(server.url, alice)
    async with http, client:
        made = await client.call_tool("generate_image", {**CAT, "prompt": "alice's cat"})
        assert not made.is_error, made.content
        task_id = made.structured_content["task_id"]
        if made.structured_content["status"] != "SUCCESS":  # a loaded machine outwaited the call: collect it
            made = await client.call_tool("get_task", {"task_id": task_id, "wait_seconds": 30})
        assert made.structured_content["status"] == "SUCCESS", made.content
        mine = await client.call_tool("list_generations", {})
        assert "alice's cat" in json.dumps(mine.structured_content)
    http, client = await _session(server.url, bob)
    async with http, client:
        theirs = await client.call_tool("list_generations", {})
        assert "alice's cat" not in json.dumps(theirs.structured_content)
        peek = await client.call_tool("get_task", {"task_id": task_id})
        assert peek.is_error
        spend = await client.call_tool("get_spend", {})
        assert spend.structured_content["last_24h"]["total_usd"] == 0
    # On a loaded machine the save may outlast the call (it then finishes in the background): wait for the file.
    deadline = anyio.current_time() + 30
    while not (saved := list((files / "images").glob("alice-*/*.png"))):
        assert anyio.current_time() < deadline, f"no file saved in 30 s; the call said: {made.content[0]}"
        await anyio.sleep(0.05)
    assert saved and not list((files / "images").glob("*.png"))  # in alice's own folder, nowhere else
    report = subprocess.run(
        [sys.executable, "-m", "qolaba_mcp", "spend", "--json"],
        env=server_env(issuer.url, QOLABA_LEDGER_URL=f"sqlite:///{files / 'ledger.db'}"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    people = {person["subject"]: person for person in json.loads(report.stdout)["people"]}
    assert people["alice"]["issuer"] == issuer.url and "bob" not in people
    assert alice not in report.stdout and alice not in report.stderr


def test_tokens_stay_out_of_the_log(setup: tuple[Issuer, HttpServer]) -> None:
    issuer, server = setup
    bad = forged(issuer, aud="https://other.example/mcp")
    assert post(server, bad).status_code == 401
    good = issuer.token("alice")
    assert post(server, good).status_code == 200
    err = server.stderr()  # at DEBUG, uvicorn's access log included
    assert "refused a token" in err
    for token in (bad, good):
        assert token not in err and token.split(".")[1] not in err and token.split(".")[2] not in err


@pytest.mark.anyio
async def test_a_session_stays_with_its_person(setup: tuple[Issuer, HttpServer]) -> None:
    issuer, server = setup
    answer = post(server, issuer.token("alice"))
    session = answer.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    hijack = httpx2.post(
        server.url,
        json=listing,
        headers={**HEADERS, "Authorization": f"Bearer {issuer.token('bob')}", "mcp-session-id": session},
        timeout=10,
    )
    assert hijack.status_code == 404


def test_an_unreachable_issuer_means_503_until_it_answers(shared_sandbox: SandboxServer) -> None:
    port, gone = free_port(), free_port()
    server = HttpServer(
        server_env(
            shared_sandbox.base_url,
            QOLABA_MCP_OAUTH_ISSUER=f"http://127.0.0.1:{gone}",
            QOLABA_MCP_PUBLIC_URL=f"http://127.0.0.1:{port}/mcp",
        ),
        port=port,
    )
    try:
        answer = post(server, "whatever")
        assert answer.status_code == 503
    finally:
        _, err = server.stop()
    assert "QOLABA_MCP_OAUTH_ISSUER" in err and "whatever" not in err


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"QOLABA_MCP_OAUTH_ISSUER": "https://id.example"}, "QOLABA_MCP_PUBLIC_URL"),
        (
            {
                "QOLABA_MCP_OAUTH_ISSUER": "https://id.example",
                "QOLABA_MCP_PUBLIC_URL": "https://m.example/mcp",
                "QOLABA_MCP_AUTH_TOKEN": "t0ken",
            },
            "QOLABA_MCP_AUTH_TOKEN",
        ),
        (
            {"QOLABA_MCP_OAUTH_ISSUER": "http://id.example", "QOLABA_MCP_PUBLIC_URL": "https://m.example/mcp"},
            "QOLABA_MCP_OAUTH_ISSUER: must use https",
        ),
        (
            {"QOLABA_MCP_OAUTH_ISSUER": "https://id.example", "QOLABA_MCP_PUBLIC_URL": "http://m.example/mcp"},
            "QOLABA_MCP_PUBLIC_URL: must use https",
        ),
    ],
)
def test_configuration_that_cannot_work_stops_at_start(env: dict[str, str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qolaba_mcp", "--transport", "http", "--port", str(free_port())],
        env=server_env("http://127.0.0.1:9", **env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert says in done.stderr and "t0ken" not in done.stderr
