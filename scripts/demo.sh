#!/usr/bin/env bash
# The README's main job: install rktlet, then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python scripts/demo.py
