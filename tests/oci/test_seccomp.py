"""The RuntimeDefault seccomp profile's content, and Localhost profile conversion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cri.oci.capabilities import DEFAULT_CAPABILITIES
from cri.oci.seccomp import (
    CLONE_NAMESPACE_FLAGS,
    load_localhost_profile,
    runtime_default_profile,
    seccomp_architectures,
)

# Must stay out of the default allow list (the brief's list plus their siblings).
BLOCKED = [
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsmount",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "acct",
    "settimeofday",
    "clock_settime",
    "perf_event_open",
    "userfaultfd",
    "open_by_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "modify_ldt",
    "syslog",
]
# A process cannot run without these.
NEEDED = [
    "read",
    "write",
    "openat",
    "close",
    "mmap",
    "brk",
    "execve",
    "exit_group",
    "rt_sigaction",
    "futex",
    "wait4",
    "fork",
    "socket",
    "epoll_wait",
    "getrandom",
    "rseq",
    "statx",
]


def unconditional(profile: dict[str, Any]) -> set[str]:
    return {
        n
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
        for n in rule["names"]
    }


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def test_default_profile_is_an_allow_list() -> None:
    profile = runtime_default_profile(DEFAULT_CAPABILITIES, "x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = unconditional(profile)
    assert not set(BLOCKED) & allowed
    assert set(NEEDED) <= allowed
    json.dumps(profile)


def test_clone_is_allowed_only_without_namespace_flags() -> None:
    profile = runtime_default_profile(DEFAULT_CAPABILITIES, "x86_64")
    (clone,) = rules_for(profile, "clone")
    assert clone["args"] == [
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    assert CLONE_NAMESPACE_FLAGS == 0x7E020000
    (clone3,) = rules_for(profile, "clone3")
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", 38)
    # s390 passes clone's flags second.
    s390 = runtime_default_profile(DEFAULT_CAPABILITIES, "s390x")
    assert rules_for(s390, "clone")[0]["args"][0]["index"] == 1


def test_personality_is_limited_to_known_personas() -> None:
    rules = rules_for(runtime_default_profile((), "x86_64"), "personality")
    values = sorted(r["args"][0]["value"] for r in rules)
    assert values == [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]


@pytest.mark.parametrize(
    ("cap", "unlocked"),
    [
        pytest.param(
            "CAP_SYS_ADMIN",
            ["mount", "umount2", "unshare", "setns", "pivot_root", "bpf"],
            id="sys-admin",
        ),
        pytest.param("CAP_SYS_PTRACE", ["ptrace", "process_vm_readv", "kcmp"], id="sys-ptrace"),
        pytest.param("CAP_SYS_MODULE", ["init_module", "delete_module"], id="sys-module"),
        pytest.param("CAP_SYS_TIME", ["settimeofday", "clock_settime"], id="sys-time"),
        pytest.param("CAP_BPF", ["bpf"], id="bpf"),
    ],
)
def test_capabilities_unlock_their_syscalls(cap: str, unlocked: list[str]) -> None:
    base = unconditional(runtime_default_profile(DEFAULT_CAPABILITIES, "x86_64"))
    granted = unconditional(runtime_default_profile([*DEFAULT_CAPABILITIES, cap], "x86_64"))
    assert set(unlocked) <= granted - base
    # Keyrings are never namespaced: no capability unlocks them.
    assert not {"keyctl", "add_key", "request_key"} & granted


def test_sys_admin_allows_clone_with_any_flags() -> None:
    profile = runtime_default_profile(["CAP_SYS_ADMIN"], "x86_64")
    assert {"clone", "clone3"} <= unconditional(profile)


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("aarch64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        ("mips", []),
    ],
)
def test_architectures(machine: str, expected: list[str]) -> None:
    assert seccomp_architectures(machine) == expected


def test_docker_format_profile_is_converted(tmp_path: Path) -> None:
    doc = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {
                "architecture": "SCMP_ARCH_X86_64",
                "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            },
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "basics"},
            {
                "name": "ptrace",
                "action": "SCMP_ACT_ALLOW",
                "includes": {"caps": ["CAP_SYS_PTRACE"]},
            },
            {"names": ["chown"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_CHOWN"]}},
            {
                "names": ["arch_prctl"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"arches": ["amd64"]},
            },
            {"names": ["x"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
        ],
    }
    path = tmp_path / "docker.json"
    path.write_text(json.dumps(doc))
    profile = load_localhost_profile(str(path), "f", capabilities=["CAP_CHOWN"], machine="x86_64")
    assert profile == {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW"},
        ],
    }
    with_ptrace = load_localhost_profile(
        str(path), "f", capabilities=["CAP_SYS_PTRACE"], machine="x86_64"
    )
    names = [n for r in with_ptrace["syscalls"] for n in r["names"]]
    assert "ptrace" in names and "chown" in names
