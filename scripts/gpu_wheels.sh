#!/usr/bin/env bash
# The wheels benchmarks/bench_gpu.py needs on the GPU machine (Python 3.12, no registry there), into .whl/.
# Only what its image lacks (/work/.library/device/KINDS.md): open_clip (with open_clip_train), its ftfy and
# ftfy's wcwidth, and webdataset with braceexpand. Torch, torchvision, timm, huggingface_hub, safetensors,
# regex, tqdm, numpy, pyarrow, pillow, pyyaml, fsspec, pandas and scikit-image are there already.
# Versions: the ones this checkout's .venv runs (requirements/), so the dry run here tests the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 webdataset==0.2.111 braceexpand==0.1.7
ls -l .whl
du -ch .whl/*.whl | tail -1
