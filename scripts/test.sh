#!/usr/bin/env bash
# The test command: install, lint, type-check, then the whole suite (slow real-model tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
.venv/bin/ruff check
.venv/bin/ruff format --check
.venv/bin/mypy src
.venv/bin/python -m pytest "$@"
