#!/usr/bin/env bash
# The main job on the embedded default: Airflow standalone (SQLite, LocalExecutor),
# Spark local, local storage, a synthetic crawl served from 127.0.0.1.
#   DEMO_URLS=6500 DEMO_PORT=8765 KEEP_RUNNING=0 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# 6,500 URLs give the tiny scale its 5,000-sample pool after download failures, the hosts' rules
# (robots.txt, TDMRep: ~8% of the synthetic web says no, two hosts of 40 cannot be asked) and the pool stages
DEMO_URLS="${DEMO_URLS:-6500}"
DEMO_PORT="${DEMO_PORT:-8765}"
KEEP_RUNNING="${KEEP_RUNNING:-0}"
mkdir -p "$AIRFLOW_HOME" var/log
started=$(date +%s)

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "== synthetic crawl: $DEMO_URLS URLs on 200 hosts of the synthetic web, all served from 127.0.0.1:$DEMO_PORT"
# a fresh crawl each time: the demo's crawls, pool versions and Airflow runs go (trained models stay)
rm -rf "$DATACOMP_STORAGE_ROOT/synthetic" "$DATACOMP_STORAGE_ROOT/crawls" \
       "$DATACOMP_STORAGE_ROOT/pool" "$DATACOMP_STORAGE_ROOT/eval_index" "$DATACOMP_STORAGE_ROOT/subsets" \
       "$DATACOMP_STORAGE_ROOT/runs" "$DATACOMP_STORAGE_ROOT/leaderboard"
# Airflow's database is made while the crawl is generated: neither needs the other
(airflow db migrate > var/log/airflow-migrate.log 2>&1 &&
 # GPU stages run in this pool; its slots bound how many run at once (one GPU here, or the CPU)
 airflow pools set gpu 1 "GPU stages of the pool build (metadata pass)" > /dev/null) &
migrate=$!
# (its pool in DataComp's published layout needs the CLIP stand-ins, which the build trains: it comes last)
datacomp synthetic --out "$DATACOMP_STORAGE_ROOT/synthetic" --n-urls "$DEMO_URLS" \
    --base-url "http://127.0.0.1:$DEMO_PORT" --urls-per-file 2000 --published-rows 0 --hosts 200
setsid datacomp serve --port "$DEMO_PORT" --hang-seconds 20 > var/log/image-server.log 2>&1 &
pids+=($!)

# the demo trains four of the subsets (DataComp's no filter, basic, CLIP score and the DataComp-1B recipe)
if [ -z "${DATACOMP_CONFIG:-}" ]; then
    export DATACOMP_CONFIG="$DATACOMP_HOME/var/demo-config.yaml"
    cat > "$DATACOMP_CONFIG" <<YAML
training:
  baselines: [no_filter, basic_filter, clip_score_l14_30, image_based_intersect_clip_score_l14_30]
  num_checkpoints: 1            # the tiny budget in one epoch (DataComp's 5 restart the data loader each time)
# the build's settings, here rather than in a trigger's conf: the demo follows the run that the weekly
# schedule starts, which reads the config file
download:
  # the synthetic crawl is served from loopback, which a real crawl may never reach: allow that one port
  allowed_private_addresses: ["127.0.0.1:$DEMO_PORT"]
  # its 200 hosts (s000.synthetic.test...) are names of that server: resolved as curl's --resolve would
  host_addresses: ["*.synthetic.test=127.0.0.1"]
  timeout: 5
  processes_count: 1
  thread_count: 32
  # a partition's downloads in one shard (no more than its URLs), not a full shard and a small tail
  number_sample_per_shard: 2000
extract:
  urls_per_partition: 2000
metadata:
  # three raw shards to a task (the demo's five in two): the gpu pool runs them one at a time anyway,
  # and each task pays ~7 s to start (imports, models)
  shards_per_task: 3
YAML
fi

echo "== airflow: api-server, scheduler, dag-processor, triggerer (log: var/log/airflow-standalone.log)"
wait "$migrate" || { echo "airflow db migrate failed: var/log/airflow-migrate.log"; exit 1; }
# what `airflow standalone` runs (SQLite, LocalExecutor), listening on loopback only
setsid bash scripts/airflow_local.sh > var/log/airflow-standalone.log 2>&1 &
pids+=($!)
for _ in $(seq 120); do
    python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$AIRFLOW__API__PORT/api/v2/monitor/health', timeout=2)" 2>/dev/null && break
    sleep 2
done
echo "   UI: http://127.0.0.1:$AIRFLOW__API__PORT  user 'admin', password in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"

echo "== commonpool_build through the scheduler"
# the build's Asset events start filtering, its subsets training (the config's scale), the trained
# models evaluation: the demo waits for the runs made from here on
built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
phase=$(date +%s)
# on a new machine the first build also trains the embedded CLIP stand-ins (once per machine)
python scripts/run_dag.py commonpool_build --timeout 1800
echo "   build: $(( $(date +%s) - phase )) s"
python - <<'PY'
import glob, json, os
from datacomp_ops.core import ledger
from datacomp_ops.pool.build import format_summary
from datacomp_ops.synthetic.crawl import compare_with_truth
root = os.environ["DATACOMP_STORAGE_ROOT"]
from datacomp_ops.core import versions
# the run that published the newest pool version
latest = versions.latest(root)
(report,) = glob.glob(os.path.join(root, "pool", latest, "reports", "*.json"))
summary = json.load(open(report))
print(format_summary(summary))
table = ledger.final_statuses(*versions.ledger_dirs(root, summary["pool_version"]))
check = compare_with_truth(os.path.join(root, "synthetic", "crawl-data", summary["crawl_id"], "truth.parquet"),
                           table["uid"].to_pylist(), table["status"].to_pylist())
print(f"  final statuses vs the crawl's truth: {check['matched']} of {table.num_rows} match"
      + "".join(f"\n    {n} x {what}" for what, n in check["mismatched"].items()))
PY
echo "== filtering_baselines, started by the pool's Asset events"
phase=$(date +%s)
python scripts/run_dag.py filtering_baselines --after "$built_at" --timeout 900
echo "   filtering: $(( $(date +%s) - phase )) s"
python - <<'PY'
import glob, json, os
from datacomp_ops.core import versions
from datacomp_ops.filtering.run import format_table
root = os.environ["DATACOMP_STORAGE_ROOT"]
version = versions.latest(root)
records = [json.load(open(p)) | {"pool_name": f"{version}/tiny"}
           for p in glob.glob(os.path.join(root, "subsets", version, "tiny", "*.json"))]
order = {r["label"]: i for i, r in enumerate(records)}
from datacomp_ops.core.config import load_config
from datacomp_ops.filtering.baselines import parse_all
labels = list(parse_all(load_config().filtering.baselines))
records.sort(key=lambda r: labels.index(r["label"]) if r["label"] in labels else len(labels) + order[r["label"]])
print(format_table(records))
PY
echo "== train_clip and evaluate_clip, started by the subsets' Asset events (config: training.baselines)"
phase=$(date +%s)
python scripts/run_dag.py train_clip --after "$built_at" --timeout 1800
# every evaluation run exists by now: each training emits its event before its run ends, and
# train_clip's wait ended three polls after its last run did
python scripts/run_dag.py evaluate_clip --after "$built_at" --timeout 900 --settle 1
echo "   training and evaluation: $(( $(date +%s) - phase )) s"
echo "== leaderboard (one seed per baseline: benchmarks/bench_miniature.py runs three, README \"The miniature\")"
datacomp leaderboard
echo "   the platform's page: http://127.0.0.1:$AIRFLOW__API__PORT/plugin/datacomp"
echo "== a pool in DataComp's published layout, for the import_published DAG's empty form (datacomp import-published)"
datacomp synthetic --out "$DATACOMP_STORAGE_ROOT/synthetic" --published-only --base-url "http://127.0.0.1:$DEMO_PORT"
echo "== done in $(( $(date +%s) - started )) s (pool under $DATACOMP_STORAGE_ROOT/pool, subsets under $DATACOMP_STORAGE_ROOT/subsets, runs under $DATACOMP_STORAGE_ROOT/runs)"
if [ "$KEEP_RUNNING" = "1" ]; then
    echo "Airflow and the image server keep running; Ctrl-C stops them."
    wait
fi
