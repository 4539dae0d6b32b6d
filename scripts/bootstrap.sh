#!/usr/bin/env bash
# Set up ./.venv with everything ilo-pl needs (idempotent: re-runs only when pyproject.toml changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ilo-pl-installed
want=$(sha1sum pyproject.toml scripts/bootstrap.sh | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision first, as a matching pair (lpips and robustness need torchvision;
# mixing a torch build with another build's torchvision breaks its ops).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test,bench]"
echo "$want" > "$stamp"
