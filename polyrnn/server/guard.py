"""Who may talk to the server, and how much: an ASGI middleware in front of the app.

* **Host allow-list.** Bound to loopback, only requests addressed to ``localhost``, ``127.0.0.1`` or
  ``[::1]`` (with any port) are served: a web page that rebinds its own domain name to 127.0.0.1 (DNS
  rebinding) gets a 400.
* **Same origin for changes.** A POST, PUT, PATCH or DELETE whose ``Origin`` (or, without one, ``Referer``)
  is another site gets a 403, so a page the annotator visits cannot submit a form to the tool.
* **A token off loopback.** Bound to any other address, every request needs the session token (a
  ``?token=`` query, which also sets a cookie for the page's own requests, the cookie, or the
  ``X-Polyrnn-Token`` header), as Jupyter does.
* **JSON only.** A request that carries a body must say ``Content-Type: application/json`` (else 415): a
  cross-site page can send ``text/plain`` without asking, but not JSON.
* **Body limit and deadline.** A request body over ``max_body`` bytes gets a 413 before it is read into
  memory, and one that has not fully arrived ``body_timeout`` seconds after its headers gets a 408 (a client
  trickling its body a byte a second holds nothing). Slow headers: :mod:`polyrnn.server.http`.
* **Credentials as bytes.** Tokens are compared as bytes, so any header text gets a 403, never an error.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK = {"localhost", "127.0.0.1", "::1"}
CHANGES = {"POST", "PUT", "PATCH", "DELETE"}
TOKEN_HEADER = "x-polyrnn-token"
TOKEN_COOKIE = "polyrnn_token"


def is_loopback(host: str) -> bool:
    return host.strip("[]") in LOOPBACK


class Guard:
    """The middleware (see the module docstring).

    Args:
        app: the ASGI app behind it.
        bind_host: the address the server listens on.
        token: required on every request when not None.
        max_body: largest request body in bytes.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        bind_host: str = "127.0.0.1",
        token: str | None = None,
        max_body: int = 32 * 1024 * 1024,
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.loopback = is_loopback(bind_host)
        self.hosts = LOOPBACK | {bind_host.strip("[]")}
        self.token = token
        self.max_body = max_body
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _reply(send, *refusal)
            return
        length = headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > self.max_body:
            await _reply(send, 413, f"request body over {self.max_body // 2**20} MB")
            return
        has_body = (length.isdigit() and int(length) > 0) or "transfer-encoding" in headers
        if has_body:
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                await _reply(send, 415, "send the body as JSON (Content-Type: application/json)")
                return
            try:
                body = await asyncio.wait_for(self._body(receive), self.body_timeout)
            except TimeoutError:
                await _reply(send, 408, f"the request body did not arrive within {self.body_timeout:g} s")
                return
            if body is None:  # the client left, or sent more than the limit
                await _reply(send, 413, f"request body over {self.max_body // 2**20} MB")
                return
            receive = _replay(body, receive)
        send = self._with_token_cookie(scope, send)
        await self.app(scope, receive, send)

    async def _body(self, receive: Receive) -> bytes | None:
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > self.max_body:
                return None
        return bytes(body)

    def _with_token_cookie(self, scope: Scope, send: Send) -> Send:
        query_token = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        if self.token is not None and query_token and same_secret(query_token, self.token):
            return _with_cookie(send, self.token)
        return send

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = urlsplit("//" + headers.get("host", "")).hostname or ""
        if self.loopback and host not in self.hosts:
            return 400, f"host '{host}' is not served here (use http://127.0.0.1 or http://localhost)"
        if scope["method"] in CHANGES:
            origin = headers.get("origin") or headers.get("referer") or ""
            if origin and origin != "null":
                if urlsplit(origin).netloc != headers.get("host", ""):
                    return 403, "cross-site request refused"
            elif origin == "null":
                return 403, "cross-site request refused"
        if self.token is not None and not self._has_token(scope, headers):
            return 403, "this server needs its token: open the address it printed (…/?token=…)"
        return None

    def _has_token(self, scope: Scope, headers: dict[str, str]) -> bool:
        assert self.token is not None
        candidates = [headers.get(TOKEN_HEADER, "")]
        cookie = SimpleCookie(headers.get("cookie", ""))
        if TOKEN_COOKIE in cookie:
            candidates.append(cookie[TOKEN_COOKIE].value)
        candidates += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        return any(c and same_secret(c, self.token) for c in candidates)


def same_secret(given: str, secret: str) -> bool:
    """``given`` equals ``secret``, compared in constant time as UTF-8 bytes (any text, never an error)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), secret.encode("utf-8", "surrogateescape")
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then what the client sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _with_cookie(send: Send, token: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            message = dict(message)
            message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]
        await send(message)

    return wrapped


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def invalid_request(_: Any, exc: Exception) -> Any:
    """FastAPI's handler for a body that does not validate: 422 with where and what, never the offending
    value (it may not even be valid JSON: NaN, a lone surrogate)."""
    from fastapi.responses import JSONResponse

    errors = exc.errors() if hasattr(exc, "errors") else []
    detail = [
        {
            "loc": [str(v) for v in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)
