#!/usr/bin/env bash
# A short end-to-end check of a plain install (no test extra): every verb's --help, then a small
# `featurelens run` with its output sent to a log (as under nohup or CI) that must map and explain features.
# Usage: bash scripts/smoke.sh [VENV]   (default .venv). About 3-5 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
featurelens="$venv/bin/featurelens"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$featurelens" --help >/dev/null
for verb in $("$venv/bin/python" -c "from featurelens.cli.main import VERBS; print(*VERBS)"); do
    "$featurelens" "$verb" --help >/dev/null || { echo "smoke: featurelens $verb --help failed" >&2; exit 1; }
done
echo "smoke: featurelens --help and every verb's --help work"

start=$SECONDS
if ! "$featurelens" run --tokens 16384 --expansion 2 --eval-tokens 1024 \
        --out "$work/run" >"$work/run.log" 2>&1; then
    cat "$work/run.log" >&2
    echo "smoke: featurelens run failed" >&2
    exit 1
fi
"$venv/bin/python" - "$work/run" "$work/run.log" <<'PY'
import sqlite3
import sys
from pathlib import Path

import featurelens as fl

run, log = Path(sys.argv[1]), Path(sys.argv[2]).read_text().splitlines()
for stage in ("capturing:", "training:", "mapping:", "explaining:"):
    lines = [line for line in log if line.startswith(stage)]
    assert lines, f"the log shows no progress line for {stage!r}:\n" + "\n".join(log)
    print(f"smoke: log, last of {len(lines)} line(s): {lines[-1]}")
with fl.Atlas.open(run / "atlas.sqlite") as atlas:
    features = len(atlas)
with sqlite3.connect(run / "atlas.sqlite") as db:
    methods = dict(db.execute("SELECT method, count(*) FROM explanations GROUP BY method").fetchall())
assert methods.get("baseline") == features, f"baseline explained {methods.get('baseline')} of {features}"
assert set(methods) == {"baseline"}, f"by default only the baseline explains: {methods}"
assert any("--explainer openai" in line for line in log), "the run names no command for a stronger explainer"
assert any(line.startswith("featurelens run:") for line in log), "the run prints no stage time table"
print(f"smoke: the run mapped {features:,} features and explained them: {methods}")
PY
echo "smoke: featurelens run finished in $((SECONDS - start)) s"
