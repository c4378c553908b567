#!/usr/bin/env bash
# Sets up a fresh checkout: a virtual environment in .venv with torch, this package
# (editable) and the test tools. Builds the CUDA extension where a CUDA toolkit exists.
# Re-running is cheap: it reinstalls only when setup files or csrc/ changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${CAPSID_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.capsid-install-stamp"
want=$(find csrc setup.py pyproject.toml -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import capsid_kernels, capsid_gr" 2>/dev/null; then
  exit 0
fi

echo "[bootstrap] installing torch and build tools"
"$VENV/bin/python" -m pip install -q "torch>=2.4" "setuptools>=64" wheel ninja
echo "[bootstrap] installing capsid-kernels (editable; the CUDA build takes a few minutes on 2 cores)"
# No build isolation: the extension must compile against the torch installed above.
"$VENV/bin/python" -m pip install -q --no-build-isolation -e ".[gr,dev]"
echo "$want" > "$stamp"
"$VENV/bin/python" -m capsid_kernels.info --short
