#!/usr/bin/env bash
# Installs everything the tests need, then runs the checks and the test suite.
# This is the README's test command; CI runs it as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
# The real Kubernetes node clients (crictl, kubelet, kube-apiserver), when this clone sits
# beside the team's shared tools; tests that need them skip, saying so, without.
if [ -z "${RKTLET_E2E_BIN:-}" ] && [ -f ../shared/tools/install.sh ]; then
    RKTLET_E2E_BIN=$(sh ../shared/tools/install.sh)
    export RKTLET_E2E_BIN
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
