set -o pipefail
cp .gpu/fb.part04 /tmp/p/ && cat /tmp/p/fb.part0* > /tmp/fb.zip && md5sum /tmp/fb.zip
mkdir -p /tmp/site /tmp/src && python3 -m zipfile -e /tmp/fb.zip /tmp/site
for w in /tmp/p/small/*.whl; do python3 -m zipfile -e $w /tmp/site; done
cp -r .gpu/iopath /tmp/site/ && python3 .gpu/patch.py /tmp/site/fbgemm_gpu/sparse_ops.py
# the code: a snapshot if one was carried, else this copy of the working tree (it travels anyway)
if [ -f .gpu/src.tar ]; then tar -C /tmp/src -xf .gpu/src.tar; else tar -cf - --exclude=./.gpu . | tar -C /tmp/src -xf -; fi
ln -sfn /tmp/src/passes /tmp/src/dmt_fx/passes
cd /tmp/src && PYTHONPATH=/tmp/site:/tmp/src PYTHONUNBUFFERED=1 timeout 400 python3 benchmarks/gpu_check.py --out $OUT "$@" 2>&1 | grep -v -i -E "warn|compat_table|cannot determine|\[0m|\[33m|^\s*$" | tee $OUT/log
