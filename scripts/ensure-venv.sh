#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs certevo into it.
# Idempotent: it reinstalls only when pyproject.toml or this script changed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${CERTEVO_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "certevo needs Python >= 3.11; '$python' is $("$python" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"

stamp="$venv/.certevo-install"
want=$(cat "$root/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Setting up $venv (first run takes a few minutes)..." >&2
  "$venv/bin/python" -m pip install -q --upgrade pip
  # The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
  "$venv/bin/python" -m pip install -q torch==2.13.0
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  # auto-lirpa 0.3 pins torch<1.13; its real runtime needs are certevo's dependencies.
  # Installed last so pip's resolver does not report its stale pins as conflicts.
  "$venv/bin/python" -m pip install -q --no-deps auto-lirpa==0.3
  echo "$want" > "$stamp"
fi
