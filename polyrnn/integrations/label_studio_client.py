"""The Label Studio a back end talks to: its address, the token, and the few calls polyrnn makes (task images
from its origin, ``/api/annotations/<id>/``, ``/api/tasks/<id>/``, the token exchange). Every call: no
redirects (urllib would send the token along), bounded size and time, one :class:`DataError` with the reason.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyrnn.data.instance import DataError

MAX_IMAGE_BYTES = 100 * 2**20  # a downloaded task image
MAX_API_BYTES = 10 * 2**20  # one Label Studio API answer (an annotation, a task)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib would send the API key along to wherever it leads."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class LabelStudioClient:
    """Label Studio at ``url`` (LABEL_STUDIO_URL) with ``token`` (LABEL_STUDIO_API_KEY: a personal access
    token or a legacy API token); ``timeout``: seconds one call may take in all."""

    url: str | None = None
    token: str | None = None
    timeout: float = 30.0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _access: tuple[str | None, float] = field(default=(None, 0.0), init=False, repr=False)

    def on_origin(self, url: str) -> str | None:
        """``url`` as an address on Label Studio's own origin (a relative ``/data/...`` joined to it), or
        None: another host, port or scheme, ``file:``, no LABEL_STUDIO_URL."""
        if not self.url:
            return None
        base = urllib.parse.urlsplit(self.url)
        if base.scheme not in ("http", "https") or not base.netloc:
            return None
        parsed = urllib.parse.urlsplit(url)
        if not parsed.scheme and not parsed.netloc:
            if not url.startswith("/"):
                return None
            full = urllib.parse.urlunsplit((base.scheme, base.netloc, parsed.path, parsed.query, ""))
        elif (parsed.scheme, parsed.netloc.lower()) == (base.scheme, base.netloc.lower()):
            full = url
        else:
            return None
        return full

    def download(self, full: str, cache_dir: Path) -> Path:
        """Fetch ``full`` (Label Studio's origin, checked by the caller with :meth:`on_origin`) with the
        token into ``cache_dir`` (once: a second call finds the file); no redirects (the token would follow
        them), at most :data:`MAX_IMAGE_BYTES`, ``timeout`` seconds in all."""
        cache = cache_dir / hashlib.sha1(full.encode("utf-8", "surrogateescape")).hexdigest()
        if cache.is_file():
            return cache
        req = urllib.request.Request(full, headers=self.auth_header())
        opener = urllib.request.build_opener(_NoRedirect)
        deadline = time.monotonic() + self.timeout
        data = bytearray()
        try:
            with opener.open(req, timeout=min(10.0, self.timeout)) as r:
                if int(r.headers.get("Content-Length") or 0) > MAX_IMAGE_BYTES:
                    raise DataError(f"image '{full}' is larger than {MAX_IMAGE_BYTES // 2**20} MB")
                while chunk := r.read1(1 << 16):
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        raise DataError(f"image '{full}' is larger than {MAX_IMAGE_BYTES // 2**20} MB")
                    if time.monotonic() > deadline:
                        raise DataError(f"image '{full}' took longer than {self.timeout:g} s")
        except (OSError, ValueError, http.client.HTTPException) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"image '{full}' could not be downloaded ({type(e).__name__})") from None
        cache.parent.mkdir(parents=True, exist_ok=True)
        from polyrnn.io import atomic_write_bytes

        atomic_write_bytes(cache, bytes(data))
        return cache

    def auth_header(self) -> dict[str, str]:
        """How requests to Label Studio authenticate with ``token`` (LABEL_STUDIO_API_KEY): a legacy API
        token as ``Token <key>``; a personal access token (a JWT refresh token, Label Studio 1.17+'s default)
        is exchanged at ``/api/token/refresh/`` for a short-lived access token, sent as ``Bearer`` and
        renewed a minute before it expires."""
        if not self.token:
            return {}
        if not _is_jwt(self.token):
            return {"Authorization": f"Token {self.token}"}
        with self._lock:  # one exchange at a time: request threads share the access token
            access, expires = self._access
            if access is None or time.time() > expires - 60:
                answer = self._post_json("/api/token/refresh/", {"refresh": self.token})
                access = answer.get("access") if isinstance(answer, dict) else None
                if not isinstance(access, str) or not _is_jwt(access):
                    raise DataError("Label Studio did not exchange LABEL_STUDIO_API_KEY for an access token")
                self._access = (access, _jwt_expiry(access))
        return {"Authorization": f"Bearer {access}"}

    def get_json(self, path: str) -> Any:
        """``GET`` a Label Studio API path (``/api/...``) with :meth:`auth_header`: its JSON, or None for a
        404. No redirects, :data:`MAX_API_BYTES`, ``timeout`` seconds; :class:`DataError` else."""
        return self._request_json(urllib.request.Request(self._api_url(path), headers=self.auth_header()))

    def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self._api_url(path),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        return self._request_json(req)

    def _api_url(self, path: str) -> str:
        base = urllib.parse.urlsplit(self.url or "")
        if base.scheme not in ("http", "https") or not base.netloc:
            raise DataError(f"LABEL_STUDIO_URL={self.url!r} is not an http(s) address")
        return urllib.parse.urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + path, "", ""))

    def _request_json(self, req: urllib.request.Request) -> Any:
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=min(10.0, self.timeout)) as r:
                raw = r.read(MAX_API_BYTES + 1)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise DataError(f"Label Studio answered {e.code} to {req.get_method()} {req.full_url}") from None
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise DataError(
                f"Label Studio could not be reached at {req.full_url} ({type(e).__name__})"
            ) from None
        if len(raw) > MAX_API_BYTES:
            raise DataError(f"Label Studio's answer to {req.full_url} is larger than {MAX_API_BYTES} bytes")
        try:
            return json.loads(raw)
        except ValueError:
            raise DataError(f"Label Studio's answer to {req.full_url} is not JSON") from None


def _is_jwt(token: str) -> bool:
    """A JSON Web Token (three base64url parts, the first a JSON header): a personal access token."""
    parts = token.split(".")
    return len(parts) == 3 and token.startswith("eyJ") and all(parts)


def _jwt_expiry(token: str) -> float:
    """The ``exp`` (Unix seconds) of a JWT's payload, read without checking the signature (Label Studio
    checks it; this only decides when to renew); 5 minutes from now when it has none."""
    import base64

    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (ValueError, KeyError, TypeError, IndexError):
        return time.time() + 300
