#!/usr/bin/env bash
# Installs what rktlet needs on a Debian 12 machine, as root: Debian packages,
# then a virtualenv at .venv with rktlet and (with --dev) its test tools.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

# Runtime packages; the test-only ones follow.
packages=(python3 python3-venv python3-dev gcc util-linux procps iproute2 e2fsprogs
          runc crun containernetworking-plugins catatonit iptables busybox-static)
# Only the tests need these: a real local OCI registry and its htpasswd tool.
test_packages=()
if ((dev)); then
    # The peers the benchmarks measure against, strace for their breakdowns, the
    # static C library their log writer (bench/writer.c) is linked with, and criu
    # (CheckpointContainer reports why it cannot run), and etcd for the API server of
    # the kubelet end-to-end suite.
    test_packages=(docker-registry apache2-utils openssl containerd conmon strace libc6-dev criu
                   etcd-server)
fi

missing=()
for p in "${packages[@]}" ${test_packages[@]+"${test_packages[@]}"}; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install.sh: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ((dev)); then
    .venv/bin/python -m pip install -q -e '.[dev]'
else
    .venv/bin/python -m pip install -q -e .
fi
