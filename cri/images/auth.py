"""Registry authentication: credentials, ``WWW-Authenticate`` challenges, bearer tokens.

A registry answers an unauthenticated request with 401 and a challenge.  ``Basic``
means: resend with the user's credentials.  ``Bearer realm=…,service=…,scope=…`` means:
ask the token server at ``realm`` for a token for that service and scope (anonymously,
with basic credentials, or by exchanging an identity token, the OAuth2 refresh token
``docker login`` stores), then resend with ``Authorization: Bearer <token>``.  A
registry token from the CRI AuthConfig is already such a bearer token.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from cri.errors import InvalidArgument, PermissionDenied, Unavailable

__all__ = [
    "Challenge",
    "Credentials",
    "TokenCache",
    "fetch_token",
    "parse_challenges",
]

# Used when a token server names no lifetime; the distribution spec's own default.
_DEFAULT_TOKEN_SECONDS = 60
_CLIENT_ID = "rktlet"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the CRI AuthConfig carries, normalised."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    @classmethod
    def from_auth_config(
        cls,
        *,
        username: str = "",
        password: str = "",
        auth: str = "",
        identity_token: str = "",
        registry_token: str = "",
        field: str = "auth",
    ) -> Credentials:
        """Build from the AuthConfig fields; ``auth`` is base64 ``user:password``."""
        if auth and not (username or password):
            try:
                decoded = base64.b64decode(auth, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise InvalidArgument(f"{field}.auth: not base64 of 'username:password'") from exc
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument(f"{field}.auth: decoded value has no ':' separator")
        if password and not username:
            raise InvalidArgument(f"{field}.username: a password was given without a username")
        return cls(username, password, identity_token, registry_token)

    def basic_header(self) -> str | None:
        if not self.username:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lowercased
    params: Mapping[str, str]


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _read_token(text: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] not in ' \t,="':
        i += 1
    return text[start:i], i


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    # Called with text[i] == '"'; backslash escapes any character (RFC 7230 quoted-pair).
    out: list[str] = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError("unterminated quoted string")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges (RFC 7235 auth-params form).

    Malformed input yields the challenges parsed before the error rather than an
    exception: a registry's broken header must not hide a usable challenge.
    """
    challenges: list[Challenge] = []
    i = 0
    n = len(header)
    while i < n:
        i = _skip_ws(header, i)
        while i < n and header[i] == ",":
            i = _skip_ws(header, i + 1)
        scheme, i = _read_token(header, i)
        if not scheme:
            break
        params: dict[str, str] = {}
        while True:
            i = _skip_ws(header, i)
            save = i
            key, i = _read_token(header, i)
            i = _skip_ws(header, i)
            if not key or i >= n or header[i] != "=":
                # Not a parameter: either the next challenge's scheme or the end.
                i = save
                break
            i = _skip_ws(header, i + 1)
            try:
                if i < n and header[i] == '"':
                    value, i = _read_quoted(header, i)
                else:
                    value, i = _read_token(header, i)
            except ValueError:
                challenges.append(Challenge(scheme.lower(), params))
                return challenges
            params[key.lower()] = value
            i = _skip_ws(header, i)
            if i < n and header[i] == ",":
                i += 1
        challenges.append(Challenge(scheme.lower(), params))
    return challenges


@dataclass(slots=True)
class _CachedToken:
    token: str
    expires: float


class TokenCache:
    """Bearer tokens per (realm, service, scope), reused until shortly before they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str, str], _CachedToken] = {}

    def get(self, key: tuple[str, str, str, str]) -> str | None:
        entry = self._tokens.get(key)
        if entry is None or entry.expires <= time.monotonic():
            return None
        return entry.token

    def drop(self, key: tuple[str, str, str, str]) -> None:
        self._tokens.pop(key, None)

    def put(self, key: tuple[str, str, str, str], token: str, lifetime: float) -> None:
        # A margin so that a token does not expire between the check and its use.
        self._tokens[key] = _CachedToken(token, time.monotonic() + max(lifetime - 10, 1))


async def fetch_token(
    client: httpx.AsyncClient,
    challenge: Challenge,
    scope: str,
    credentials: Credentials,
) -> tuple[str, float]:
    """Obtain a bearer token for ``scope`` from the challenge's realm.

    Returns (token, lifetime in seconds).
    """
    realm = challenge.params.get("realm")
    if not realm:
        raise Unavailable("registry sent a Bearer challenge without a realm")
    service = challenge.params.get("service", "")
    scopes = [s for s in {scope, challenge.params.get("scope", "")} if s]
    try:
        if credentials.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "service": service,
                "client_id": _CLIENT_ID,
                "scope": " ".join(sorted(scopes)),
            }
            response = await client.post(realm, data=form)
        else:
            params: list[tuple[str, str | int | float | bool | None]] = []
            if service:
                params.append(("service", service))
            params.extend(("scope", s) for s in sorted(scopes))
            headers = {}
            basic = credentials.basic_header()
            if basic is not None:
                headers["Authorization"] = basic
            response = await client.get(realm, params=params, headers=headers)
    except httpx.HTTPError as exc:
        raise Unavailable(f"token server {realm}: {exc!r}") from exc
    if response.status_code in (401, 403):
        raise PermissionDenied(
            f"token server {realm} refused the credentials (HTTP {response.status_code})"
        )
    if response.status_code != 200:
        raise Unavailable(f"token server {realm} answered HTTP {response.status_code}")
    try:
        body: Any = response.json()
    except ValueError as exc:
        raise Unavailable(f"token server {realm} sent a body that is not JSON") from exc
    if not isinstance(body, dict):
        raise Unavailable(f"token server {realm} sent JSON that is not an object")
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise Unavailable(f"token server {realm} sent no token")
    lifetime = body.get("expires_in", _DEFAULT_TOKEN_SECONDS)
    if not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = _DEFAULT_TOKEN_SECONDS
    return token, float(lifetime)
