"""rktlet's RuntimeDefault seccomp profile, and loading of Localhost profiles.

Theory of the default profile
-----------------------------
It is an allow list: the default action answers EPERM, and only the system calls an
ordinary process needs are let through.  What is left out falls in three groups:

* calls that act on kernel state namespaces do not isolate (keyrings: ``keyctl``,
  ``add_key``, ``request_key``; modules; ``kexec_*``; swap; accounting; the clock;
  ``reboot``; ``bpf``; ``perf_event_open``; ``userfaultfd``; ``io_uring_*``, whose
  rings bypass this very filter);
* calls that build new namespaces or mounts (``unshare``, ``setns``, ``mount``,
  ``umount2``, ``pivot_root``, the new mount API, ``clone`` with any ``CLONE_NEW*``
  flag) — the classic first step of a container escape, even for calls the kernel would
  allow unprivileged (user namespaces);
* calls that reach into other processes (``ptrace``, ``process_vm_*``, ``kcmp``,
  ``pidfd_getfd``, ``process_madvise``).

Several of those are what a granted capability is for, so they are allowed again when
the container holds it (``CAP_SYS_ADMIN`` → mounts and namespaces, ``CAP_SYS_PTRACE`` →
ptrace …); the kernel still checks the capability itself.

``clone3`` passes its flags in a structure that seccomp cannot inspect, so without
CAP_SYS_ADMIN it answers ENOSYS: the C libraries then fall back to ``clone``, whose
flags the filter can check.  ``personality`` is limited to the personas programs use
in practice (query, Linux, 32-bit Linux, UNAME26).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Collection, Mapping
from typing import Any

from cri.errors import InvalidArgument

__all__ = [
    "ACTIONS",
    "OPERATORS",
    "load_localhost_profile",
    "runtime_default_profile",
    "seccomp_architectures",
]

EPERM = 1
ENOSYS = 38

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
# CLONE_NEWPID | CLONE_NEWNET.  CLONE_NEWTIME (0x80) is deliberately absent: in clone()'s
# flags that bit belongs to the exit-signal byte, and the kernel only honours
# CLONE_NEWTIME through clone3 and unshare.
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
CLONE_NAMESPACE_FLAGS |= 0x20000000 | 0x40000000

# personality(2) values: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26, and the
# 0xffffffff query.
_PERSONAS = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)

_ARCHES: dict[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "amd64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "i386": ("SCMP_ARCH_X86",),
    "i686": ("SCMP_ARCH_X86",),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "arm64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "armv7l": ("SCMP_ARCH_ARM",),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}

# Grouped by purpose so that a reviewer can see why each is here.  Names unknown to the
# running kernel or libseccomp (32-bit variants on a 64-bit host, new calls on old
# kernels) are skipped by runc, so listing them is harmless.
_FILES = """
    read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2
    open openat openat2 creat close close_range lseek _llseek dup dup2 dup3
    fcntl fcntl64 flock fsync fdatasync sync syncfs sync_file_range sync_file_range2
    arm_sync_file_range truncate truncate64 ftruncate ftruncate64 fallocate
    fadvise64 fadvise64_64 arm_fadvise64_64 readahead sendfile sendfile64 splice tee
    vmsplice copy_file_range ioctl pipe pipe2 memfd_create cachestat
    stat fstat lstat stat64 fstat64 lstat64 newfstatat fstatat64 statx
    statfs fstatfs statfs64 fstatfs64 access faccessat faccessat2
    chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat chown32 fchown32 lchown32
    utime utimes futimesat utimensat utimensat_time64
    getdents getdents64 mkdir mkdirat rmdir rename renameat renameat2 link linkat
    symlink symlinkat unlink unlinkat readlink readlinkat mknod mknodat
    getcwd chdir fchdir chroot umask
    getxattr lgetxattr fgetxattr setxattr lsetxattr fsetxattr listxattr llistxattr
    flistxattr removexattr lremovexattr fremovexattr
    inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark
"""
_POLLING = """
    select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old
    epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4
    timerfd_create timerfd_settime timerfd_settime64 timerfd_gettime timerfd_gettime64
    io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64
"""
_MEMORY = """
    brk mmap mmap2 munmap mremap mprotect pkey_mprotect pkey_alloc pkey_free madvise
    mlock mlock2 munlock mlockall munlockall mincore msync remap_file_pages membarrier
    get_mempolicy
"""
_PROCESSES = """
    fork vfork execve execveat exit exit_group wait4 waitid waitpid
    kill tkill tgkill pidfd_open pidfd_send_signal
    getpid getppid gettid getpgid setpgid getpgrp getsid setsid
    getuid geteuid getgid getegid getuid32 geteuid32 getgid32 getegid32
    setuid setgid setreuid setregid setresuid setresgid setfsuid setfsgid
    setuid32 setgid32 setreuid32 setregid32 setresuid32 setresgid32 setfsuid32 setfsgid32
    getresuid getresgid getresuid32 getresgid32 getgroups setgroups getgroups32 setgroups32
    capget capset prctl arch_prctl set_tid_address set_robust_list get_robust_list
    futex futex_time64 futex_waitv futex_wake futex_wait futex_requeue rseq
    set_thread_area get_thread_area set_tls cacheflush breakpoint
    sched_yield sched_getaffinity sched_setaffinity sched_getparam sched_setparam
    sched_getscheduler sched_setscheduler sched_get_priority_max sched_get_priority_min
    sched_rr_get_interval sched_rr_get_interval_time64 sched_getattr sched_setattr
    getpriority setpriority ioprio_get ioprio_set getcpu
    getrlimit setrlimit ugetrlimit prlimit64 getrusage times
    uname olduname oldolduname sethostname setdomainname sysinfo getrandom
    seccomp landlock_create_ruleset landlock_add_rule landlock_restrict_self
    restart_syscall pause alarm nanosleep clock_nanosleep clock_nanosleep_time64
    clock_gettime clock_gettime64 clock_getres clock_getres_time64 gettimeofday time
    adjtimex clock_adjtime clock_adjtime64
    getitimer setitimer timer_create timer_delete timer_getoverrun
    timer_settime timer_settime64 timer_gettime timer_gettime64
"""
_SIGNALS = """
    rt_sigaction rt_sigprocmask rt_sigreturn rt_sigsuspend rt_sigpending
    rt_sigtimedwait rt_sigtimedwait_time64 rt_sigqueueinfo rt_tgsigqueueinfo
    sigaction sigprocmask sigreturn sigsuspend sigpending sigaltstack signal
"""
_IPC = """
    shmget shmat shmdt shmctl semget semop semtimedop semtimedop_time64 semctl
    msgget msgsnd msgrcv msgctl ipc
    mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive
    mq_timedreceive_time64 mq_notify mq_getsetattr
"""
_NETWORK = """
    socket socketpair bind listen accept accept4 connect getsockname getpeername
    sendto recvfrom send recv sendmsg recvmsg sendmmsg recvmmsg recvmmsg_time64
    shutdown setsockopt getsockopt socketcall
"""

# Allowed only when the container holds one of the capabilities on the left.
_BY_CAPABILITY: tuple[tuple[frozenset[str], str], ...] = (
    (
        frozenset({"CAP_SYS_ADMIN"}),
        """mount umount umount2 unshare setns pivot_root open_tree move_mount fsopen
        fsconfig fsmount fspick mount_setattr fanotify_init quotactl quotactl_fd
        lookup_dcookie swapon swapoff name_to_handle_at""",
    ),
    (
        frozenset({"CAP_SYS_PTRACE"}),
        "ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd process_madvise userfaultfd",
    ),
    (frozenset({"CAP_SYS_MODULE"}), "init_module finit_module delete_module"),
    (frozenset({"CAP_SYS_BOOT"}), "reboot kexec_load kexec_file_load"),
    (frozenset({"CAP_SYS_TIME"}), "settimeofday stime clock_settime clock_settime64"),
    (frozenset({"CAP_SYS_PACCT"}), "acct"),
    (frozenset({"CAP_SYS_RAWIO"}), "iopl ioperm"),
    (
        frozenset({"CAP_SYS_NICE"}),
        "mbind set_mempolicy set_mempolicy_home_node migrate_pages move_pages",
    ),
    (frozenset({"CAP_SYSLOG"}), "syslog"),
    (frozenset({"CAP_SYS_TTY_CONFIG"}), "vhangup"),
    (frozenset({"CAP_DAC_READ_SEARCH"}), "open_by_handle_at"),
    (frozenset({"CAP_BPF", "CAP_SYS_ADMIN"}), "bpf"),
    (frozenset({"CAP_PERFMON", "CAP_SYS_ADMIN"}), "perf_event_open"),
)


def _names(block: str) -> list[str]:
    return block.split()


ALWAYS_ALLOWED: tuple[str, ...] = tuple(
    sorted(
        {
            n
            for block in (_FILES, _POLLING, _MEMORY, _PROCESSES, _SIGNALS, _IPC, _NETWORK)
            for n in _names(block)
        }
    )
)


def seccomp_architectures(machine: str | None = None) -> list[str]:
    """libseccomp architecture names for this machine (the native one and its compat ABIs)."""
    return list(_ARCHES.get((machine or platform.machine()).lower(), ()))


def runtime_default_profile(
    capabilities: Collection[str] = (), machine: str | None = None
) -> dict[str, Any]:
    """The RuntimeDefault profile, as the ``linux.seccomp`` object of an OCI spec.

    ``capabilities`` are the container's bounding set: holding one re-allows the system
    calls that exist to exercise it.
    """
    caps = frozenset(capabilities)
    machine = (machine or platform.machine()).lower()
    allowed = set(ALWAYS_ALLOWED)
    for needs, block in _BY_CAPABILITY:
        if needs & caps:
            allowed.update(_names(block))
    rules: list[dict[str, Any]] = [
        {"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"},
    ]
    if "CAP_SYS_ADMIN" in caps:
        rules.append({"names": ["clone", "clone3"], "action": "SCMP_ACT_ALLOW"})
    else:
        # s390 swaps clone's first two arguments.
        flags_index = 1 if machine.startswith("s390") else 0
        rules.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {
                        "index": flags_index,
                        "value": CLONE_NAMESPACE_FLAGS,
                        "valueTwo": 0,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            }
        )
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    # Several conditions in one rule are ANDed, so each accepted value needs its own rule.
    for persona in _PERSONAS:
        rules.append(
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": persona, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
            }
        )
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": seccomp_architectures(machine),
        "syscalls": rules,
    }


# --------------------------------------------------------------------------- Localhost


def _fail(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}")


def _check_args(args: Any, field: str) -> list[dict[str, Any]]:
    if args is None:
        return []
    if not isinstance(args, list):
        raise _fail(field, "args must be a list")
    out = []
    for j, arg in enumerate(args):
        where = f"{field}.args[{j}]"
        if not isinstance(arg, Mapping):
            raise _fail(field, f"args[{j}] must be an object")
        index, value, op = arg.get("index"), arg.get("value", 0), arg.get("op")
        value_two = arg.get("valueTwo", 0)
        if not isinstance(index, int) or not 0 <= index <= 5:
            raise _fail(where, "index must be 0..5")
        for name, v in (("value", value), ("valueTwo", value_two)):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**64:
                raise _fail(where, f"{name} must be an unsigned 64-bit integer")
        if op not in OPERATORS:
            raise _fail(where, f"unknown operator {op!r}")
        out.append({"index": index, "value": value, "valueTwo": value_two, "op": op})
    return out


_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "i386": "386", "armv7l": "arm"}


def _applies(entry: Mapping[str, Any], caps: frozenset[str], machine: str) -> bool:
    """Docker-format ``includes``/``excludes`` conditions (capabilities, architectures)."""
    inc = entry.get("includes") or {}
    exc = entry.get("excludes") or {}
    if not isinstance(inc, Mapping) or not isinstance(exc, Mapping):
        return True
    native = {machine, _GOARCH.get(machine, machine)}
    inc_caps, inc_arches = inc.get("caps") or [], inc.get("arches") or []
    exc_caps, exc_arches = exc.get("caps") or [], exc.get("arches") or []
    if inc_caps and not all(c in caps for c in inc_caps):
        return False
    if inc_arches and not any(str(a).lower() in native for a in inc_arches):
        return False
    if exc_caps and any(c in caps for c in exc_caps):
        return False
    return not (exc_arches and any(str(a).lower() in native for a in exc_arches))


def load_localhost_profile(
    path: str,
    field: str,
    *,
    capabilities: Collection[str] = (),
    machine: str | None = None,
) -> dict[str, Any]:
    """Load a seccomp profile file into an OCI ``linux.seccomp`` object.

    Accepts the OCI form and the Docker/containerd form Kubernetes users write
    (``archMap``, single ``name``, ``includes``/``excludes`` by capability or
    architecture, ``comment``).  Every problem raises InvalidArgument naming ``field``.
    """
    if not path or not os.path.isabs(path):
        raise _fail(field, f"profile path {path!r} must be absolute")
    try:
        with open(path, "rb") as f:
            raw = f.read(4 << 20)
    except OSError as exc:
        raise _fail(field, f"cannot read seccomp profile {path}: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(field, f"seccomp profile {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, Mapping):
        raise _fail(field, f"seccomp profile {path} is not a JSON object")
    default = doc.get("defaultAction")
    if default not in ACTIONS:
        raise _fail(field, f"seccomp profile {path}: defaultAction {default!r} is not valid")
    machine = (machine or platform.machine()).lower()
    caps = frozenset(capabilities)
    profile: dict[str, Any] = {"defaultAction": default}
    if "defaultErrnoRet" in doc:
        errno_ret = doc["defaultErrnoRet"]
        if not isinstance(errno_ret, int) or errno_ret < 0:
            raise _fail(field, f"seccomp profile {path}: defaultErrnoRet must be >= 0")
        profile["defaultErrnoRet"] = errno_ret

    arches = doc.get("architectures")
    if arches is None and isinstance(doc.get("archMap"), list):
        native = set(seccomp_architectures(machine)[:1])
        arches = []
        for m in doc["archMap"]:
            if isinstance(m, Mapping) and m.get("architecture") in native:
                arches = [m["architecture"], *(m.get("subArchitectures") or [])]
    if arches is None:
        arches = []
    if not isinstance(arches, list) or not all(isinstance(a, str) for a in arches):
        raise _fail(field, f"seccomp profile {path}: architectures must be a list of strings")
    profile["architectures"] = arches
    if isinstance(doc.get("flags"), list):
        profile["flags"] = [str(x) for x in doc["flags"]]
    for key in ("listenerPath", "listenerMetadata"):
        if isinstance(doc.get(key), str):
            profile[key] = doc[key]

    rules = doc.get("syscalls") or []
    if not isinstance(rules, list):
        raise _fail(field, f"seccomp profile {path}: syscalls must be a list")
    out = []
    for i, entry in enumerate(rules):
        where = f"{field} ({path}) syscalls[{i}]"
        if not isinstance(entry, Mapping):
            raise _fail(where, "must be an object")
        if not _applies(entry, caps, machine):
            continue
        names = entry.get("names")
        if names is None and isinstance(entry.get("name"), str):
            names = [entry["name"]]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _fail(where, "names must be a non-empty list of strings")
        action = entry.get("action")
        if action not in ACTIONS:
            raise _fail(where, f"unknown action {action!r}")
        rule: dict[str, Any] = {"names": list(names), "action": action}
        if "errnoRet" in entry:
            if not isinstance(entry["errnoRet"], int) or entry["errnoRet"] < 0:
                raise _fail(where, "errnoRet must be >= 0")
            rule["errnoRet"] = entry["errnoRet"]
        args = _check_args(entry.get("args"), where)
        if args:
            rule["args"] = args
        out.append(rule)
    profile["syscalls"] = out
    return profile
