#!/usr/bin/env bash
# Creates .venv with the pinned, CPU-only stack and installs dmt_fx (editable).
# Idempotent: re-running with the same pins does nothing but a quick check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
PINS="torch==2.13.0 fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0 tensordict torchmetrics==1.0.3 tqdm pyre-extensions iopath typing-inspect networkx rich pytest hypothesis matplotlib ruff mypy==2.4.1"
STAMP="$VENV/.dmt_fx_pins"

# `dmt-fx bench emulated` needs iproute2 (ip, tc); install it when missing and we are root.
if ! command -v tc >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing iproute2 for the emulated-network benchmark"
  (apt-get update -qq && apt-get install -y -qq iproute2) >/dev/null 2>&1 || echo "setup: iproute2 install failed (bench emulated will say so)"
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PINS" ] && "$VENV/bin/python" -c "import torchrec, dmt_fx" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi
echo "setup: creating $VENV (torch CPU, fbgemm-gpu-cpu, torchrec) ..."
"$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip
$PIP install torch==2.13.0
$PIP install fbgemm-gpu-cpu==1.8.0
# torchrec's metadata asks for the CUDA fbgemm-gpu wheel (~500 MB), which would replace the
# CPU build: install it without dependencies and list its other dependencies ourselves.
$PIP install --no-deps torchrec==1.8.0
$PIP install tensordict torchmetrics==1.0.3 tqdm pyre-extensions iopath typing-inspect \
  networkx rich pytest hypothesis matplotlib ruff mypy==2.4.1
$PIP install --no-deps -e .
"$VENV/bin/python" -c "import torchrec, fbgemm_gpu, dmt_fx; print('setup: ok, torch', __import__('torch').__version__)"
echo "$PINS" > "$STAMP"
