"""OAuth 2.1 on the HTTP transport: this server as a resource server of one authorization server (the issuer).

With ``QOLABA_MCP_OAUTH_ISSUER`` set, every request to /mcp needs an access token that issuer made for
``QOLABA_MCP_PUBLIC_URL`` (RFC 9068 JWT access tokens checked against the issuer's keys, or opaque tokens checked
by RFC 7662 introspection). The token's issuer and subject become the caller's principal (``_identity``).

- RFC 9728 protected-resource metadata at the well-known path; a missing or bad token gets 401 with a
  ``WWW-Authenticate`` pointing at it, a token without the scope a call needs 403 ``insufficient_scope`` (RFC 6750).
- The issuer's metadata (RFC 8414, else OpenID discovery) and keys are fetched at start and cached; a token
  signed with an unknown ``kid`` refetches the keys, at most once per ``KEYS_REFRESH_GAP`` seconds.
- Until the issuer has answered, /mcp answers 503: no token is ever accepted unverified.

PyJWT (with ``cryptography``) checks the signatures; it is already installed as a dependency of the MCP SDK, and
imported only when OAuth is on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._config import Settings

if TYPE_CHECKING:
    import jwt

log = logging.getLogger("qolaba_mcp.oauth")

SCOPE_READ = "qolaba:read"
SCOPE_GENERATE = "qolaba:generate"
SCOPES = (SCOPE_READ, SCOPE_GENERATE)
SPENDING_TOOLS = frozenset({"generate_image"})
"""Tools that can spend money: they need qolaba:generate; every other request needs qolaba:read."""
_NO_SCOPE_METHODS = frozenset({"initialize", "ping"})

# Asymmetric algorithms only: a symmetric one would let anyone holding the issuer's public key sign tokens.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LEEWAY = 30
"""Seconds of clock skew allowed on exp and nbf."""
KEYS_REFRESH_GAP = 30.0
"""Seconds between two fetches of the issuer's keys caused by tokens with unknown key ids."""
DISCOVERY_RETRY = 5.0
"""Seconds between attempts to reach an issuer that has not answered yet."""
INTROSPECTION_TTL = 60.0
"""Longest time an introspection answer is reused (never past the token's expiry)."""
INTROSPECTION_CACHE_MAX = 10_000
"""Most tokens remembered as checked (JWTs) or introspected; past it the memory starts afresh."""


class TokenRejected(Exception):
    """A token this server does not accept; the message says why, never quoting the token."""


class IssuerUnavailable(Exception):
    """The issuer's metadata or keys could not be fetched."""


@dataclass(frozen=True, kw_only=True)
class Verified:
    subject: str
    client_id: str
    scopes: frozenset[str]
    expires_at: int | None


def metadata_url(public_url: str) -> str:
    """RFC 9728 section 3.1: the well-known path inserted between the host and the resource's path."""
    parts = urlsplit(public_url)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{parts.path.rstrip('/')}"


def fingerprint(token: str) -> str:
    """What stands for a token anywhere it could be seen: never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class Issuer:
    """The authorization server: its metadata, its signing keys (cached), its introspection endpoint."""

    def __init__(self, settings: Settings, *, http: httpx2.AsyncClient | None = None) -> None:
        assert settings.mcp_oauth_issuer and settings.mcp_public_url  # Settings refuses OAuth without both
        self.issuer = settings.mcp_oauth_issuer
        self.audience = settings.mcp_public_url
        self._http = http or httpx2.AsyncClient(timeout=10.0, follow_redirects=False)
        self._introspection_url = settings.mcp_oauth_introspection_url
        secret = settings.mcp_oauth_introspection_client_secret
        self._introspection_auth = (
            (settings.mcp_oauth_introspection_client_id, secret.get_secret_value())
            if settings.mcp_oauth_introspection_client_id and secret
            else None
        )
        self._jwks_uri: str | None = None
        self._keys: dict[str, Any] = {}  # kid -> jwt.PyJWK
        self._last_refetch = -KEYS_REFRESH_GAP
        self._lock = asyncio.Lock()
        self._introspected: dict[str, tuple[float, Verified | None]] = {}
        self._checked: dict[bytes, Verified] = {}  # sha256 of a verified JWT: its claims, until it expires

    @property
    def ready(self) -> bool:
        return self._jwks_uri is not None

    async def discover(self) -> None:
        """The issuer's metadata (RFC 8414, else OpenID discovery), then its keys; IssuerUnavailable if not."""
        async with self._lock:
            if self.ready:
                return
            parts = urlsplit(self.issuer)
            base, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
            candidates = [
                f"{base}/.well-known/oauth-authorization-server{path}",
                f"{base}{path}/.well-known/openid-configuration",
            ]
            problems = []
            for url in candidates:
                try:
                    meta = await self._get_json(url)
                except IssuerUnavailable as exc:
                    problems.append(str(exc))
                    continue
                if meta.get("issuer") != self.issuer:  # RFC 8414 section 3.3: must match exactly
                    problems.append(f"{url} names issuer {meta.get('issuer')!r}, not QOLABA_MCP_OAUTH_ISSUER")
                    continue
                jwks_uri = meta.get("jwks_uri")
                if not isinstance(jwks_uri, str):
                    problems.append(f"{url} names no jwks_uri")
                    continue
                if self._introspection_url is None and isinstance(meta.get("introspection_endpoint"), str):
                    self._introspection_url = meta["introspection_endpoint"]
                await self._fetch_keys(jwks_uri)
                self._jwks_uri = jwks_uri
                return
            raise IssuerUnavailable("; ".join(problems))

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"accept": "application/json"})
        except httpx2.HTTPError as exc:
            raise IssuerUnavailable(f"{url}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise IssuerUnavailable(f"{url}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise IssuerUnavailable(f"{url}: not JSON") from None
        if not isinstance(body, dict):
            raise IssuerUnavailable(f"{url}: not a JSON object")
        return body

    async def _fetch_keys(self, jwks_uri: str) -> None:
        import jwt

        document = await self._get_json(jwks_uri)
        keys: dict[str, Any] = {}
        for entry in document.get("keys", []):
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
                continue  # encryption keys, and symmetric keys, never verify a signature here
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type or algorithm this library does not know: other keys still count
            keys[str(entry.get("kid", ""))] = key
        self._keys = keys

    async def _key(self, kid: str) -> Any:
        key = self._keys.get(kid)
        if key is None and self._jwks_uri and time.monotonic() - self._last_refetch >= KEYS_REFRESH_GAP:
            async with self._lock:  # one refetch for a burst of tokens signed with a new key
                if kid not in self._keys and time.monotonic() - self._last_refetch >= KEYS_REFRESH_GAP:
                    self._last_refetch = time.monotonic()  # forged kids cannot make us hammer the issuer
                    try:
                        await self._fetch_keys(self._jwks_uri)
                    except IssuerUnavailable as exc:
                        log.warning("the issuer's keys could not be refetched: %s", exc)
            key = self._keys.get(kid)
        if key is None:
            raise TokenRejected("signed with a key the issuer does not publish")
        return key

    async def verify(self, token: str) -> Verified:
        """The token's subject and scopes, or TokenRejected."""
        if token.count(".") == 2:
            # A JWT whose signature and claims were checked is not checked again until it expires: the same bytes
            # verify the same way, and the RSA check is most of the cost of a call with a token.
            digest = hashlib.sha256(token.encode()).digest()
            known = self._checked.get(digest)
            if known is not None and (known.expires_at is None or known.expires_at + LEEWAY > time.time()):
                return known
            verified = await self._verify_jwt(token)
            if len(self._checked) >= INTROSPECTION_CACHE_MAX:
                self._checked.clear()
            self._checked[digest] = verified
            return verified
        if self._introspection_url is None or self._introspection_auth is None:
            raise TokenRejected("not a JWT, and this server has no introspection credentials for opaque tokens")
        return await self._introspect(token)

    async def _verify_jwt(self, token: str) -> Verified:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("malformed token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenRejected(f"signing algorithm {str(alg)[:16]!r} is not accepted")
        key: jwt.PyJWK = await self._key(str(header.get("kid", "")))
        if key._jwk_data.get("alg", alg) != alg:  # a key published for one algorithm verifies no other
            raise TokenRejected("signing algorithm does not fit the issuer's key")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("issued for another resource (audience)") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("issued by another issuer") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"invalid ({type(exc).__name__})") from None
        return _verified(claims)

    async def _introspect(self, token: str) -> Verified:
        now = time.monotonic()
        cache_key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._introspected.get(cache_key)
        if cached is not None and cached[0] > now:
            if cached[1] is None:
                raise TokenRejected("inactive (introspection)")
            return cached[1]
        assert self._introspection_url and self._introspection_auth
        try:
            response = await self._http.post(
                self._introspection_url,
                data={"token": token, "token_type_hint": "access_token"},
                auth=self._introspection_auth,
                headers={"accept": "application/json"},
            )
            answer = response.json() if response.status_code == 200 else None
        except (httpx2.HTTPError, ValueError):
            answer = None
        if not isinstance(answer, dict):
            raise TokenRejected("the issuer's introspection endpoint did not answer")  # not cached: may recover
        verified: Verified | None = None
        problem = "inactive (introspection)"
        if answer.get("active") is True:
            audience = answer.get("aud")
            audiences = audience if isinstance(audience, list) else [audience]
            if answer.get("iss", self.issuer) != self.issuer:
                problem = "issued by another issuer"
            elif self.audience not in audiences:
                problem = "issued for another resource (audience)"
            elif not (answer.get("sub") or answer.get("client_id")):
                problem = "without a subject"
            else:
                # RFC 9068 section 2.2: a client acting for itself (client credentials) is its own subject.
                verified = _verified({**answer, "sub": answer.get("sub") or answer["client_id"]})
        expiry = answer.get("exp") if verified else None
        ttl = INTROSPECTION_TTL if not isinstance(expiry, int | float) else min(INTROSPECTION_TTL, expiry - time.time())
        if len(self._introspected) >= INTROSPECTION_CACHE_MAX:
            self._introspected = {k: v for k, v in self._introspected.items() if v[0] > now}
            if len(self._introspected) >= INTROSPECTION_CACHE_MAX:
                self._introspected.clear()
        self._introspected[cache_key] = (now + max(ttl, 0.0), verified)
        if verified is None:
            raise TokenRejected(problem)
        return verified


def _verified(claims: dict[str, Any]) -> Verified:
    scope = claims.get("scope", claims.get("scp", ""))
    scopes = scope.split() if isinstance(scope, str) else [s for s in scope if isinstance(s, str)]
    expiry = claims.get("exp")
    return Verified(
        subject=str(claims["sub"]),
        client_id=str(claims.get("client_id") or claims.get("azp") or ""),
        scopes=frozenset(scopes),
        expires_at=int(expiry) if isinstance(expiry, int | float) else None,
    )


def required_scopes(body: bytes) -> set[str]:
    """The scopes a JSON-RPC request (or batch) needs: qolaba:generate to spend, qolaba:read for the rest."""
    try:
        parsed = json.loads(body) if body.strip() else []
    except ValueError:
        return {SCOPE_READ}  # the SDK answers the parse error; reading it is not free of charge either
    needed: set[str] = set()
    for message in parsed if isinstance(parsed, list) else [parsed]:
        method = message.get("method") if isinstance(message, dict) else None
        if not isinstance(method, str) or method in _NO_SCOPE_METHODS or method.startswith("notifications/"):
            continue
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        needed.add(SCOPE_GENERATE if method == "tools/call" and name in SPENDING_TOOLS else SCOPE_READ)
    return needed


class OAuthGate:
    """ASGI middleware: the protected-resource metadata, and a verified token (with the right scope) for /mcp."""

    def __init__(self, app: ASGIApp, settings: Settings, *, mcp_path: str, issuer: Issuer | None = None) -> None:
        self._app = app
        self._issuer = issuer or Issuer(settings)
        self._mcp_path = mcp_path
        self._max_body = settings.mcp_max_body_bytes
        self._metadata_url = metadata_url(self._issuer.audience)
        self._metadata_paths = {urlsplit(self._metadata_url).path, "/.well-known/oauth-protected-resource"}
        self._metadata = json.dumps(
            {
                "resource": self._issuer.audience,
                "authorization_servers": [self._issuer.issuer],
                "scopes_supported": list(SCOPES),
                "bearer_methods_supported": ["header"],
                "resource_name": "Qolaba image generation (qolaba-mcp)",
            }
        ).encode()
        self._next_attempt = 0.0
        self._warmup: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._warmup = asyncio.ensure_future(self._discover_until_ready())
            await self._app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        if path in self._metadata_paths and scope["method"] in ("GET", "HEAD", "OPTIONS"):
            # Public and the same for everyone: browser-based clients (the Inspector) may read it from any origin.
            cors = [(b"access-control-allow-origin", b"*"), (b"access-control-allow-methods", b"GET, OPTIONS")]
            await _respond(send, 200, b"" if scope["method"] == "OPTIONS" else self._metadata, cors)
            return
        if path.rstrip("/") != self._mcp_path:
            await self._app(scope, receive, send)
            return
        await self._guard(scope, receive, send)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._issuer.ready and not await self._try_discover():
            await _respond_json(
                send,
                503,
                {"error": "temporarily_unavailable", "error_description": "the OAuth issuer has not answered yet"},
                [(b"retry-after", str(int(DISCOVERY_RETRY)).encode())],
            )
            return
        token = _bearer(scope)
        if not token:
            await self._refuse(send, 401, None, "send Authorization: Bearer <access token>", " ".join(SCOPES))
            return
        try:
            verified = await self._issuer.verify(token)
        except TokenRejected as exc:
            log.info("refused a token (%s): %s", fingerprint(token), exc)
            await self._refuse(send, 401, "invalid_token", f"the access token is {exc}", " ".join(SCOPES))
            return
        body, receive = await _buffered(receive, self._max_body) if scope["method"] == "POST" else (b"", receive)
        missing = sorted(required_scopes(body) - verified.scopes)
        if missing:
            needed = " ".join(missing)
            await self._refuse(send, 403, "insufficient_scope", f"this call needs the scope {needed}", needed, body)
            return
        access = AccessToken(
            token=fingerprint(token),  # the token itself stays out of everything downstream
            client_id=verified.client_id,
            scopes=sorted(verified.scopes),
            expires_at=verified.expires_at,
            resource=self._issuer.audience,
            subject=verified.subject,
            claims={"iss": self._issuer.issuer},
        )
        scope = {**scope, "user": AuthenticatedUser(access), "auth": AuthCredentials(sorted(verified.scopes))}
        await self._app(scope, receive, send)

    async def _refuse(
        self, send: Send, status: int, error: str | None, description: str, scope: str, body: bytes = b""
    ) -> None:
        """401 or 403 with RFC 6750's ``WWW-Authenticate``: the error, the scope to ask for, where the metadata is."""
        fields = [f'resource_metadata="{self._metadata_url}"', f'scope="{scope}"']
        if error:
            fields[:0] = [f'error="{error}"', f'error_description="{description}"']
        headers = [(b"www-authenticate", ("Bearer " + ", ".join(fields)).encode())]
        payload: dict[str, Any] = {"error": error or "invalid_request", "error_description": description}
        if status == 403:
            # What a client shows: a JSON-RPC error naming the scope to ask for, answering the request's id.
            request_id = _request_id(body)
            payload = {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {
                    "code": -32003,
                    "message": f"Forbidden: {description}; sign in again asking for the scope {scope}.",
                    "data": {"error": "insufficient_scope", "scope": scope},
                },
            }
        await _respond_json(send, status, payload, headers)

    async def _try_discover(self) -> bool:
        if time.monotonic() < self._next_attempt:
            return False
        try:
            await self._issuer.discover()
        except IssuerUnavailable as exc:
            self._next_attempt = time.monotonic() + DISCOVERY_RETRY
            log.error("the OAuth issuer (QOLABA_MCP_OAUTH_ISSUER) cannot be reached; /mcp answers 503: %s", exc)
            return False
        log.info("the OAuth issuer answered; /mcp accepts its tokens")
        return True

    async def _discover_until_ready(self) -> None:
        while not self._issuer.ready:
            if await self._try_discover():
                return
            await asyncio.sleep(DISCOVERY_RETRY)


def _bearer(scope: Scope) -> str:
    given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
    parts = given.split(maxsplit=1)
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        return ""
    try:
        return parts[1].strip().decode("ascii")
    except UnicodeDecodeError:
        return ""


def _request_id(body: bytes) -> Any:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed.get("id") if isinstance(parsed, dict) else None


async def _buffered(receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """The request body read whole (up to ``limit`` + 1 bytes, past which the app answers 413), and a receive that
    gives it to the app again."""
    chunks: list[bytes] = []
    size = 0
    more = True
    last: Message | None = None
    while more and size <= limit:
        last = await receive()
        if last["type"] != "http.request":
            break
        chunks.append(last.get("body", b""))
        size += len(chunks[-1])
        more = last.get("more_body", False)
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            if last is not None and last["type"] != "http.request":
                return last
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return body, replay


async def _respond_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    await _respond(send, status, json.dumps(body).encode(), headers)


async def _respond(send: Send, status: int, content: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": content})
