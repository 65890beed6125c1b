#!/usr/bin/env bash
# The one command for the lent GPU machine (issue 26): run there from the repository root, with .whl/
# carried (scripts/gpu_wheels.sh makes it here):
#
#     bash scripts/gpu_run.sh            # writes $OUT/log.txt, $OUT/results.json and the training logs
#
# Installs the wheels into /tmp/site (no pip install -e: the machine has no registry), shows the GPU, then
# runs benchmarks/bench_gpu.py, which keeps to --budget seconds (about 4.5 minutes expected; the outer
# timeout is the device's 8 minutes less the install).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/bench-gpu-out}"
mkdir -p "$OUT"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || nvidia-smi
    echo "cores: $(nproc)"; free -g | head -2; df -h /dev/shm /tmp | cat
    # open_clip's loaders keep up to 2 batches of float images each in /dev/shm (2.5 GB a batch of 4096):
    # give the tmpfs room for 12 loaders when it was sized smaller (the VM's memory grows after boot)
    shm_gb=$(df --output=size -BG /dev/shm | tail -1 | tr -dc 0-9)
    if [ "${shm_gb:-0}" -lt 64 ] && [ "$(id -u)" = 0 ]; then
        mount -o remount,size=64G /dev/shm && echo "/dev/shm resized from ${shm_gb}G to 64G" \
            || echo "/dev/shm stays ${shm_gb}G: the benchmark uses fewer loaders"
    fi
    t0=$(date +%s)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    python3 -c "import sys, torch, torchvision, open_clip, open_clip_train.main, webdataset, timm
print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__,
      'open_clip', open_clip.__version__, 'webdataset', webdataset.__version__, 'timm', timm.__version__)" \
        || { echo "imports failed"; exit 1; }
    echo "install and imports: $(( $(date +%s) - t0 )) s"
    # BENCH_ARGS: extra arguments (--tiny for a trial of this script on a CPU machine)
    timeout -k 10 450 python3 benchmarks/bench_gpu.py --out "$OUT" --budget 420 ${BENCH_ARGS:-}
    echo "bench_gpu exit status $?; $(date -u)"
} 2>&1 | tee "$OUT/log.txt"
