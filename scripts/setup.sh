#!/usr/bin/env bash
# Create .venv inside the checkout with the pinned dependency set. Idempotent:
# when nothing it depends on changed since the last run, it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
stamp=.venv/.setup-stamp
want=$(cat requirements/constraints.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
here=$(pwd -P)
# imported from outside the checkout, as Airflow's task processes do: a .venv shared with (or
# copied from) another checkout would run that checkout's datacomp_ops in every task
installed=$(cd / && "$here/.venv/bin/python" -c "import datacomp_ops, os; print(os.path.realpath(datacomp_ops.__path__[0]))" 2>/dev/null || true)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ "$installed" = "$here/datacomp_ops" ]; then
    echo "setup: .venv is up to date"
    exit 0
fi
if [ ! -x .venv/bin/python ]; then
    # the pinned set (requirements/constraints.txt: soupsieve 4.1, for one) needs 3.11.5 or later; Debian 12's
    # python3.11 is 3.11.2, on which pip would stop with a resolver error naming no Python at all
    if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 11, 5) <= sys.version_info[:3] < (3, 12)))' 2>/dev/null; then
        echo "setup: needs Python 3.11.5 or a later 3.11; $PYTHON is $("$PYTHON" -V 2>&1 || echo missing)." \
             "Name another with PYTHON=/path/to/python3.11 make setup" >&2
        exit 1
    fi
    # a fresh .venv takes about 8 GB (torch's CUDA build alone 5.5 GB): say so now rather than
    # have pip stop half-way with "No space left on device"
    free_mb=$(( $(df -Pk . | awk 'NR==2 {print $4}') / 1024 ))
    if [ "$free_mb" -lt 9000 ]; then
        echo "setup: a fresh .venv needs about 9 GB free on $(df -P . | awk 'NR==2 {print $6}'), only ${free_mb} MB are free" >&2
        exit 1
    fi
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade "pip>=24" wheel
.venv/bin/pip install --quiet -c requirements/constraints.txt -e ".[test]" 2> .venv/install.log \
    || { cat .venv/install.log; exit 1; }
# insightface asks for opencv-python, which would overwrite the cv2 package of
# the opencv-python-headless 4.x build that img2dataset uses: install it alone.
.venv/bin/pip install --quiet --no-deps -c requirements/constraints.txt insightface
echo "$want" > "$stamp"
echo "setup: done"
