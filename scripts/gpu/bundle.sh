#!/usr/bin/env bash
# Build what benchmarks/gpu_check.py needs on the lent GPU machine (torch 2.11 + CUDA 13, no
# package registry), in .gpu/ (ignored): FBGEMM's CUDA wheel is 465 MB, over one transfer's
# 64 MiB, so it travels as 5 pieces. torch 2.11 pairs with fbgemm-gpu 1.6 (fbgemm 1.X with
# torch 2.(X+5)) and torchrec 1.6.1; that fbgemm wheel is a CUDA 13 build.
# Left out to fit fewer pieces: the inference, VBE and global-weight-decay TBE libraries
# (training with the fused SGD/Adagrad kernels uses none); fbgemm_gpu/__init__.py skips them
# and patch_sparse_ops.py (applied there) skips their fake-kernel registrations.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
W=$(mktemp -d); S=$(mktemp -d)
pip_get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$W" "$@"; }
pip_get fbgemm-gpu==1.6.0 torchrec==1.6.1 tensordict==0.15.3 "pyvers<0.3,>=0.2"
rm -rf .gpu && mkdir -p .gpu/small
cp "$W"/fbgemm_gpu-1.6.0-*.whl "$S/fb.zip"
zip -q -d "$S/fb.zip" fbgemm_gpu/fbgemm_gpu_tbe_inference.so fbgemm_gpu/fbgemm_gpu_tbe_training_backward_vbe.so \
  fbgemm_gpu/fbgemm_gpu_tbe_training_backward_gwd.so
(cd "$S" && unzip -q fb.zip fbgemm_gpu/__init__.py && python3 - <<'PY'
p = "fbgemm_gpu/__init__.py"
s = open(p).read()
old = '        _load_library(f"{library}.so", info["version"], info["variant"] == "docs")'
skip = ('        if library in ("fbgemm_gpu_tbe_inference", "fbgemm_gpu_tbe_training_backward_vbe",'
        ' "fbgemm_gpu_tbe_training_backward_gwd"):\n            continue  # left out of this bundle\n')
assert old in s
open(p, "w").write(s.replace(old, skip + old))
PY
zip -q fb.zip fbgemm_gpu/__init__.py)
split -n 5 -d "$S/fb.zip" .gpu/fb.part
cp "$W"/torchrec-*.whl "$W"/tensordict-*.whl "$W"/pyvers-*.whl .gpu/small/
cp -r "$(python3 -c 'import iopath, os; print(os.path.dirname(iopath.__file__))')" .gpu/iopath  # sdist-only on PyPI
cp scripts/gpu/patch_sparse_ops.py .gpu/patch.py && cp scripts/gpu/go.sh .gpu/go.sh
git archive --format=tar HEAD > .gpu/src.tar
rm -rf "$W" "$S"
ls -la .gpu
