#!/usr/bin/env bash
# Builds the wheel from this checkout and checks that it works on its own, the way a user
# gets it from `pip install`: installed into a fresh folder (no editable path), imported
# from outside the repository, the built-in model transformed, `dmt-fx --help` run.
#
#   bash scripts/check_wheel.sh            # uses .venv/bin/python (scripts/setup.sh)
#   PYTHON=/path/to/python bash scripts/check_wheel.sh
#
# No downloads: the wheel is built with the environment's own setuptools
# (--no-build-isolation) and installed without dependencies (torch, torchrec are there).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$PY" -m pip wheel --disable-pip-version-check -q --no-deps --no-build-isolation -w "$TMP/dist" . >/dev/null
rm -rf build  # setuptools' scratch folder
WHEEL=$(ls "$TMP"/dist/dmt_fx-*.whl)
"$PY" -m pip install --disable-pip-version-check -q --no-deps --target "$TMP/site" "$WHEEL"

# The environment's site-packages gives torch and torchrec. `python -S` skips the .pth files,
# so an editable install of dmt_fx there (setup.sh makes one) cannot shadow the wheel; -P keeps
# the current folder off sys.path; and we run from outside the repository.
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export PYTHONPATH="$TMP/site:$SITE"
cd "$TMP"
"$PY" -S -P - "$TMP/site" "$REPO" <<'PY'
import sys

import torch

import dmt_fx
from dmt_fx.models.zoo import default_dlrm

site, repo = sys.argv[1], sys.argv[2]
assert dmt_fx.__file__.startswith(site), f"dmt_fx imported from {dmt_fx.__file__}, not the wheel"
import dmt_fx.passes
assert dmt_fx.passes.__file__.startswith(site), f"dmt_fx.passes from {dmt_fx.passes.__file__}"
model, inputs = default_dlrm()
gm = dmt_fx.transform(model, "2x2", example_inputs=inputs)
assert torch.equal(gm(*inputs), model(*inputs)), "the rewritten model differs from the original"
towers = dmt_fx.tower_plan(gm).towers
loaded = sorted(m for m in sys.modules if m.startswith("dmt_fx"))
stray = [m for m in loaded if not (getattr(sys.modules[m], "__file__", None) or site).startswith(site)]
assert not stray, f"modules imported from outside the wheel: {stray}"
print(f"check_wheel: import + transform ok ({len(towers)} towers, {len(loaded)} dmt_fx modules from the wheel)")
PY
# The console script pip wrote, with the wheel first on the path (no -S here: a plain run).
"$TMP/site/bin/dmt-fx" --help | grep -q "usage: dmt-fx"
echo "check_wheel: ok ($(basename "$WHEEL"): $(unzip -l "$WHEEL" | grep -c '\.py$') modules; dmt-fx --help runs)"
