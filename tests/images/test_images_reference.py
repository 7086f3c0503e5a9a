"""Name normalisation, auth header parsing and config loading: pure functions, table-driven."""

from __future__ import annotations

import base64

import pytest

from cri.errors import InvalidArgument
from cri.images.auth import Credentials, parse_challenges
from cri.images.config import Platform, load_images_config
from cri.images.reference import is_image_id, parse_reference

HEX = "a" * 64


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("quay.io/coreos/etcd:v3.5", "quay.io/coreos/etcd:v3.5"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("127.0.0.1:5000/a/b/c:tag", "127.0.0.1:5000/a/b/c:tag"),
        (f"busybox@sha256:{HEX}", f"docker.io/library/busybox@sha256:{HEX}"),
        (f"busybox:1.36@sha256:{HEX}", f"docker.io/library/busybox:1.36@sha256:{HEX}"),
        ("my-registry.local:443/ns/name_with__under-dash.dot:v1.0-rc_1", None),
    ],
    ids=lambda v: str(v)[:40],
)
def test_reference_normalises_like_docker(given: str, expected: str | None) -> None:
    assert str(parse_reference(given)) == (expected or given)


def test_reference_parts_and_api_host() -> None:
    ref = parse_reference("busybox")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (
        "docker.io",
        "library/busybox",
        "latest",
        None,
    )
    assert ref.api_host == "registry-1.docker.io"
    assert parse_reference("localhost:5000/app").api_host == "localhost:5000"
    pinned = parse_reference(f"app@sha256:{HEX}")
    assert pinned.tag is None and pinned.object == f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("", "empty"),
        ("Busybox", "invalid repository name component"),
        ("busybox:", "invalid tag"),
        ("busybox:-bad", "invalid tag"),
        ("a//b", "invalid repository name component"),
        ("busybox@sha256:abc", "64 lowercase hex"),
        ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("busy box", "whitespace"),
        (HEX, "image id"),
        ("x" * 300, "longer than 255"),
    ],
)
def test_reference_rejects_with_field_name(given: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_reference(given, "image.image")
    assert str(info.value).startswith("image.image: ")
    assert fragment in str(info.value)


def test_is_image_id() -> None:
    assert is_image_id(f"sha256:{HEX}") and is_image_id(HEX)
    assert not is_image_id("sha256:abc") and not is_image_id("busybox")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:a/b:pull"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.example/token",
                        "service": "registry.example",
                        "scope": "repository:a/b:pull",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
        (
            'Basic realm="a, b", Bearer realm="x",error="insufficient_scope"',
            [
                ("basic", {"realm": "a, b"}),
                ("bearer", {"realm": "x", "error": "insufficient_scope"}),
            ],
        ),
        ('Bearer realm="with \\"quote\\""', [("bearer", {"realm": 'with "quote"'})]),
        (
            "Bearer realm=unquoted , service=svc",
            [("bearer", {"realm": "unquoted", "service": "svc"})],
        ),
        ('Bearer realm="unterminated', [("bearer", {})]),
        ("", []),
    ],
)
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    got = [(c.scheme, dict(c.params)) for c in parse_challenges(header)]
    assert got == expected


def test_credentials_from_auth_config() -> None:
    auth = base64.b64encode(b"user:pa:ss").decode()
    assert Credentials.from_auth_config(auth=auth) == Credentials("user", "pa:ss")
    explicit = Credentials.from_auth_config(username="u", password="p", auth=auth)
    assert explicit == Credentials("u", "p")
    with pytest.raises(InvalidArgument, match=r"^auth\.auth: not base64"):
        Credentials.from_auth_config(auth="%%%")
    with pytest.raises(InvalidArgument, match=r"^auth\.auth: .*no ':'"):
        Credentials.from_auth_config(auth=base64.b64encode(b"nocolon").decode())
    with pytest.raises(InvalidArgument, match=r"^auth\.username"):
        Credentials.from_auth_config(password="p")
    assert Credentials().empty and not Credentials(registry_token="t").empty


def test_config_endpoints_mirrors_then_upstream() -> None:
    config = load_images_config(
        {
            "images": {
                "max_concurrent_downloads": 5,
                "platform": "linux/arm64/v8",
                "registries": {
                    "docker.io": {"mirrors": ["https://m1.example", "m2.local:5000"]},
                    "m2.local:5000": {"insecure": True},
                    "plain.local": {"insecure": True},
                },
            }
        }
    )
    assert config.max_concurrent_downloads == 5
    assert config.platform == Platform("linux", "arm64", "v8")
    assert config.endpoints("docker.io", "registry-1.docker.io") == [
        "https://m1.example",
        "http://m2.local:5000",
        "https://registry-1.docker.io",
    ]
    assert config.endpoints("plain.local", "plain.local") == ["http://plain.local"]
    assert config.endpoints("other.io", "other.io") == ["https://other.io"]


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"images": {"retry": 1}}, "images.retry: unknown setting"),
        ({"images": {"retries": True}}, "images.retries: expected int"),
        ({"images": {"max_concurrent_downloads": 0}}, "images.max_concurrent_downloads"),
        ({"images": {"platform": "linux"}}, "images.platform"),
        (
            {"images": {"registries": {"r.io": {"insecure": "yes"}}}},
            'images.registries."r.io".insecure: expected bool',
        ),
        (
            {"images": {"registries": {"r.io": {"mirrors": ["ftp://x"]}}}},
            'images.registries."r.io".mirrors[0]',
        ),
        ({"images": {"registries": {"r.io": {"mirror": []}}}}, "mirror: unknown setting"),
    ],
)
def test_config_errors_name_the_key(document: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_images_config(document)
    assert fragment in str(info.value)
