#!/usr/bin/env bash
# Installs everything the tests need, then runs the checks and the test suite.
# This is the README's test command; CI runs it as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
