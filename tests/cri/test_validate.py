"""The id check every RPC that takes a pod or container id makes."""

from __future__ import annotations

import pytest

from cri.errors import InvalidArgument
from cri.validate import MAX_ID, required_id


@pytest.mark.parametrize(
    "value",
    ["a" * 64, "0123abcdef", "web-1.x_y", "A", "x" * MAX_ID, "ÿé", "٣٤", "pod٣"],
)
def test_ids_that_pass(value: str) -> None:
    assert required_id(value, "pod_sandbox_id") == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "pod_sandbox_id: must not be empty"),
        ("x" * (MAX_ID + 1), "is not a valid id"),
        ("é" * (MAX_ID + 1), "is not a valid id"),
        ("a/b", "is not a valid id"),
        ("a b", "is not a valid id"),
        ("abc\n", "is not a valid id"),
        ("a\0", "is not a valid id"),
        ("é/", "is not a valid id"),
    ],
)
def test_ids_that_do_not(value: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        required_id(value, "pod_sandbox_id")
