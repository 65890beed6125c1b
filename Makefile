# The two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup demo test test-fast airflow lock bench-extract bench-extract-scaling bench-download bench-pool bench-filtering bench-training bench-miniature calibrate-dedup clean

setup:            ## .venv with the pinned dependency set (idempotent)
	bash scripts/setup.sh

demo: setup       ## the main job: Airflow standalone runs commonpool_build on a synthetic crawl
	bash scripts/demo.sh

test: setup       ## the whole test suite, slow end-to-end tests included (chromium, PostgreSQL, Redis from Debian's packages)
	bash scripts/system_deps.sh
	bash scripts/services.sh
	$(PY) -m ruff check .
	source scripts/env.sh && $(PY) -m pytest -ra -n 2 --dist loadfile --no-loadscope-reorder --durations=25

test-fast: setup  ## unit tests only
	$(PY) -m ruff check .
	source scripts/env.sh && $(PY) -m pytest -ra -m "not slow"

airflow: setup    ## Airflow (standalone's components) with the UI on 127.0.0.1:8080, serving the synthetic crawl; Ctrl-C stops
	KEEP_RUNNING=1 bash scripts/demo.sh

lock:             ## re-resolve pyproject.toml's dependencies and rewrite requirements/constraints.txt
	rm -rf .venv-lock && python3.11 -m venv .venv-lock
	.venv-lock/bin/pip install -q ".[test]" && .venv-lock/bin/pip install -q --no-deps insightface
	.venv-lock/bin/pip freeze --exclude-editable | grep -v "^datacomp-platform" > requirements/constraints.txt
	rm -rf .venv-lock

bench-extract: setup  ## parser and Spark stage against cc2dataset's extractor, 1M URLs
	source scripts/env.sh && $(PY) benchmarks/bench_extract.py

bench-extract-scaling: setup  ## seconds and peak memory of extraction at 100k, 1M and 10M URLs (Spark up to 1M)
	source scripts/env.sh && $(PY) benchmarks/bench_extract.py --scaling 100000,1000000,10000000

bench-download: setup  ## the download stage against img2dataset called directly, one 10,000-URL partition; then politeness on against off over 200 hosts
	source scripts/env.sh && $(PY) benchmarks/bench_download.py && $(PY) benchmarks/bench_download.py --hosts 200

bench-filtering: setup  ## every baseline on 1.28M and 12.8M generated rows, against reading its columns and DataComp's code
	source scripts/env.sh && $(PY) benchmarks/bench_filtering.py

bench-pool: setup
	source scripts/env.sh && $(PY) benchmarks/bench_pool_stages.py

bench-training: setup  ## tiny-scale training through the platform against open_clip's trainer directly
	source scripts/env.sh && $(PY) benchmarks/bench_training.py

bench-miniature: setup  ## DataComp's Table 3 baselines on the miniature over 3 seeds, as ratios to no filtering beside the paper's
	source scripts/env.sh && $(PY) benchmarks/bench_miniature.py

calibrate-dedup: setup
	source scripts/env.sh && $(PY) benchmarks/calibrate_dedup.py --urls 100000

clean:            ## remove the demo's Airflow home and data (keeps .venv)
	rm -rf var
