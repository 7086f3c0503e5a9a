"""An asynchronous OCI distribution (registry v2 API) client for pulling.

One :class:`RegistryClient` per daemon holds the HTTP connection pool and the bearer
token cache; :meth:`RegistryClient.repository` gives a :class:`Repository` for one
image reference and one set of credentials.  A repository tries its endpoints in order
(the configured mirrors, then the registry itself) for every request; on an endpoint a
transfer error is retried, and an interrupted blob download resumes with a ``Range``
request where the registry allows it.

Every byte is checked: manifests against the digest asked for (or the registry's
``Docker-Content-Digest``), blobs against their descriptor's digest and size.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import aiofiles
import httpx

from cri.errors import NotFound, PermissionDenied, RktletError, Unavailable
from cri.images.auth import Challenge, Credentials, TokenCache, fetch_token, parse_challenges
from cri.images.config import ImagesConfig
from cri.images.manifest import INDEX_TYPES, MANIFEST_TYPES, MAX_MANIFEST_BYTES, Descriptor
from cri.images.reference import Reference
from cri.images.store import DigestMismatch, Ingest

__all__ = ["FetchedManifest", "RegistryClient", "Repository", "TransferError"]

_ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
_T = TypeVar("_T")


class TransferError(Unavailable):
    """A network failure or a server error worth retrying."""


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: str
    endpoint: str


@dataclass(slots=True)
class _Endpoint:
    base: str  # scheme://host[:port]
    mirror: bool
    challenge: Challenge | None = None
    # Credentials are sent to the registry the user named, never to a mirror.
    credentials: Credentials = field(default_factory=Credentials)

    @property
    def host(self) -> str:
        return urlsplit(self.base).netloc


def _hash(data: bytes, digest: str) -> str:
    algorithm = digest.split(":", 1)[0] if ":" in digest else "sha256"
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


class RegistryClient:
    def __init__(self, config: ImagesConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.tokens = TokenCache()
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            # The system trust store, so that a CA an administrator added is honoured.
            verify=ssl.create_default_context(),
            timeout=httpx.Timeout(30.0, read=60.0),
            follow_redirects=True,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            headers={"User-Agent": "rktlet"},
        )

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    def repository(self, ref: Reference, credentials: Credentials) -> Repository:
        endpoints = []
        mirrors = self.config.registry(ref.domain).mirrors
        for i, base in enumerate(self.config.endpoints(ref.domain, ref.api_host)):
            mirror = i < len(mirrors)
            endpoints.append(
                _Endpoint(base, mirror, credentials=Credentials() if mirror else credentials)
            )
        return Repository(self, ref, endpoints)


class Repository:
    """Pull-side operations on one repository, across its endpoints."""

    def __init__(self, client: RegistryClient, ref: Reference, endpoints: list[_Endpoint]) -> None:
        self.client = client
        self.ref = ref
        self.endpoints = endpoints
        self.scope = f"repository:{ref.path}:pull"
        # The endpoint that served the manifest is asked for blobs first: it has them,
        # and a mirror earlier in the list would only answer 404 for each.
        self.preferred: _Endpoint | None = None

    # -- auth --------------------------------------------------------------------------

    def _token_key(self, ep: _Endpoint) -> tuple[str, str, str, str]:
        assert ep.challenge is not None
        creds = ep.credentials
        return (
            ep.challenge.params.get("realm", ""),
            ep.challenge.params.get("service", ""),
            self.scope,
            # Different users must not share tokens; hashed so no secret sits in a key.
            hashlib.sha256(
                f"{creds.username}\0{creds.password}\0{creds.identity_token}".encode()
            ).hexdigest(),
        )

    async def _authorization(self, ep: _Endpoint) -> tuple[str | None, bool]:
        """The Authorization value for ``ep`` and whether it is a reusable bearer token."""
        challenge = ep.challenge
        creds = ep.credentials
        if challenge is None:
            return None, False
        if challenge.scheme == "basic":
            return creds.basic_header(), False
        if challenge.scheme != "bearer":
            return None, False
        if creds.registry_token:
            return f"Bearer {creds.registry_token}", False
        key = self._token_key(ep)
        token = self.client.tokens.get(key)
        if token is None:
            token, lifetime = await fetch_token(self.client.http, challenge, self.scope, creds)
            self.client.tokens.put(key, token, lifetime)
        return f"Bearer {token}", True

    async def _send(
        self, ep: _Endpoint, path: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """GET ``path`` on ``ep`` as a streamed response, answering one auth challenge.

        The caller closes the response.
        """
        url = f"{ep.base}/v2/{self.ref.path}/{path}"
        params = {"ns": self.ref.domain} if ep.mirror else None
        dropped_token = False
        # At most three rounds: unauthenticated, then with the challenge's credentials,
        # then once more if a cached token was refused before its announced expiry.
        while True:
            request_headers = dict(headers or {})
            auth, cached_token = await self._authorization(ep)
            if auth is not None:
                request_headers["Authorization"] = auth
            request = self.client.http.build_request(
                "GET", url, headers=request_headers, params=params
            )
            try:
                response = await self.client.http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise TransferError(f"{ep.base}: {exc!r}") from exc
            if response.status_code != 401:
                return response
            if auth is not None:
                if not cached_token or dropped_token:
                    return response
                self.client.tokens.drop(self._token_key(ep))
                dropped_token = True
            elif ep.challenge is not None:
                return response
            challenges = parse_challenges(", ".join(response.headers.get_list("www-authenticate")))
            await response.aclose()
            usable = [c for c in challenges if c.scheme in ("bearer", "basic")]
            # Bearer first: a registry offering both prefers tokens.
            usable.sort(key=lambda c: c.scheme != "bearer")
            if not usable:
                raise PermissionDenied(f"{ep.host}: unauthorized, and no usable auth challenge")
            ep.challenge = usable[0]
            if ep.challenge.scheme == "basic" and not ep.credentials.username:
                raise PermissionDenied(
                    f"pull access denied for {self.ref}: {ep.host} requires credentials"
                )

    def _check_status(self, ep: _Endpoint, response: httpx.Response, what: str) -> None:
        code = response.status_code
        if code in (200, 206):
            return
        if code == 404:
            raise NotFound(f"{what} not found on {ep.host}")
        if code in (401, 403):
            hint = "" if not ep.credentials.empty else " (no credentials were given)"
            raise PermissionDenied(
                f"pull access denied for {self.ref} on {ep.host}: HTTP {code}{hint}"
            )
        if code == 429 or code >= 500:
            raise TransferError(f"{ep.host} answered HTTP {code} for {what}")
        raise Unavailable(f"{ep.host} answered HTTP {code} for {what}")

    # -- manifests ---------------------------------------------------------------------

    async def get_manifest(self, obj: str) -> FetchedManifest:
        """Fetch the manifest or index named by a tag or digest, trying every endpoint."""
        return await self._across_endpoints(lambda ep: self._get_manifest_once(ep, obj))

    async def _get_manifest_once(self, ep: _Endpoint, obj: str) -> FetchedManifest:
        what = f"manifest {self.ref.name}:{obj}" if ":" not in obj else f"manifest {obj}"
        response = await self._send(ep, f"manifests/{obj}", {"Accept": _ACCEPT})
        try:
            self._check_status(ep, response, what)
            chunks: list[bytes] = []
            total = 0
            try:
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > MAX_MANIFEST_BYTES:
                        raise Unavailable(f"{what} on {ep.host} is larger than {total} bytes")
                    chunks.append(chunk)
            except httpx.TransportError as exc:
                raise TransferError(f"{ep.host}: reading {what}: {exc!r}") from exc
        finally:
            await response.aclose()
        data = b"".join(chunks)
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if ":" in obj:
            actual = _hash(data, obj)
            if actual != obj:
                raise DigestMismatch(f"{what} from {ep.host} has digest {actual}")
            digest = obj
        else:
            digest = _hash(data, "sha256")
            announced = response.headers.get("docker-content-digest")
            if announced and announced.startswith("sha256:") and announced != digest:
                raise DigestMismatch(
                    f"{what} from {ep.host}: content hashes to {digest} but the registry "
                    f"announced {announced}"
                )
        self.preferred = ep
        return FetchedManifest(data, media_type, digest, ep.base)

    # -- blobs -------------------------------------------------------------------------

    async def fetch_blob(
        self,
        desc: Descriptor,
        ingest: Ingest,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Download ``desc`` into ``ingest.path`` and check it; the caller commits it."""

        async def once(ep: _Endpoint) -> None:
            await self._fetch_blob_once(ep, desc, ingest, progress)

        await self._across_endpoints(once, reset=lambda: self._reset(ingest, progress))

    @staticmethod
    def _reset(ingest: Ingest, progress: Callable[[int], None] | None) -> None:
        if progress is not None and ingest.written:
            progress(-ingest.written)
        ingest.reset()

    async def _fetch_blob_once(
        self,
        ep: _Endpoint,
        desc: Descriptor,
        ingest: Ingest,
        progress: Callable[[int], None] | None,
    ) -> None:
        what = f"blob {desc.digest}"
        headers = {}
        if ingest.written:
            headers["Range"] = f"bytes={ingest.written}-"
        response = await self._send(ep, f"blobs/{desc.digest}", headers)
        try:
            self._check_status(ep, response, what)
            if ingest.written and response.status_code == 200:
                # The server ignored the range: start over.
                self._reset(ingest, progress)
            elif response.status_code == 206:
                start = response.headers.get("content-range", "").removeprefix("bytes ")
                if not start.startswith(f"{ingest.written}-"):
                    self._reset(ingest, progress)
                    raise TransferError(f"{ep.host}: unusable Content-Range for {what}")
            # Append: after a reset the file is empty, after an interruption it holds the
            # prefix the Range request continues.
            async with aiofiles.open(ingest.path, "ab") as out:
                try:
                    # No chunk_size: httpx would hold bytes back until a chunk fills, and an
                    # interruption would lose them instead of leaving them to resume from.
                    async for chunk in response.aiter_bytes():
                        ingest.feed(chunk)
                        await out.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
                except httpx.TransportError as exc:
                    raise TransferError(f"{ep.host}: reading {what}: {exc!r}") from exc
        finally:
            await response.aclose()
        ingest.check()

    # -- endpoint and retry policy -------------------------------------------------------

    async def _across_endpoints(
        self,
        attempt: Callable[[_Endpoint], Awaitable[_T]],
        reset: Callable[[], None] | None = None,
    ) -> _T:
        """Run ``attempt`` on each endpoint in order until one succeeds.

        Transfer errors are retried on the same endpoint; not-found, refused
        credentials and bad content move on to the next one (a mirror may lack an
        image or hold a corrupt copy).  The last error is raised, with the earlier
        endpoints' errors in its message.
        """
        retries = self.client.config.retries
        failures: list[RktletError] = []
        order = self.endpoints
        if self.preferred is not None:
            order = [self.preferred] + [e for e in self.endpoints if e is not self.preferred]
        for ep in order:
            if reset is not None:
                reset()
            for _ in range(retries + 1):
                try:
                    return await attempt(ep)
                except TransferError as exc:
                    error: RktletError = exc
                    continue
                except (NotFound, PermissionDenied, Unavailable, DigestMismatch) as exc:
                    error = exc
                    break
            failures.append(error)
        last = failures[-1]
        if len(failures) > 1:
            earlier = "; ".join(f"{e}" for e in failures[:-1])
            raise type(last)(f"{last} (mirrors failed first: {earlier})") from last
        raise last
