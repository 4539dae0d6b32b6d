#!/usr/bin/env bash
# Set up ./.venv with everything ilo-pl needs (idempotent: re-runs only when what it installs changed).
#
#   bash scripts/bootstrap.sh           install what is missing (nothing when .venv is up to date)
#   bash scripts/bootstrap.sh --check   exit 0 if .venv is up to date, 1 if a run would install; installs nothing
#
# "Up to date": .venv/.ilo-pl-installed holds the hash of this script and of pyproject.toml without
# its [tool.pytest...] sections (test options change no installed package).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.ilo-pl-installed
want=$({ awk '/^\[/ { skip = ($0 ~ /^\[tool\.pytest/) } !skip' pyproject.toml; cat scripts/bootstrap.sh; } \
  | sha1sum | cut -d' ' -f1)
up_to_date() { [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }
if [ "${1:-}" = "--check" ]; then
  up_to_date
  exit
fi
if up_to_date; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, as a matching pair (lpips and robustness need torchvision;
# mixing a torch build with another build's torchvision breaks its ops).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
# demo: `ilo-pl demo` (gradio) and its browser test's driver (playwright; the browser is the system's
# chromium, which .ci/run installs with apt: `playwright install` is never run, nothing is downloaded).
.venv/bin/python -m pip install -q -e ".[test,bench,demo]"
echo "$want" > "$stamp"
