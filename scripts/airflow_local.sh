#!/usr/bin/env bash
# The embedded default's Airflow: what `airflow standalone` runs (api-server, scheduler, dag-processor,
# triggerer; LocalExecutor, SQLite), listening on loopback only. scripts/demo.sh and the UI tests start it.
#
# Not `airflow standalone` itself: Airflow 3.3 binds the scheduler's and triggerer's log servers (ports
# 8793, 8794) to every interface, with no setting to change it, and standalone always starts them. On one
# machine the API server reads task logs from the log folder, so they are not started (a running task's log
# notes that its served copy could not be read). AIRFLOW_SERVE_LOGS=1 starts them anyway, on every interface.
# The API server binds AIRFLOW__API__HOST (env.sh: 127.0.0.1 unless AIRFLOW_HOST says otherwise).
set -u
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
skip_logs=--skip-serve-logs
[ "${AIRFLOW_SERVE_LOGS:-0}" = 1 ] && skip_logs=
# one stop ends all four (standalone's behaviour): the demo and the tests signal this script's group
trap 'trap - TERM INT; kill 0' TERM INT
airflow api-server &
airflow scheduler $skip_logs &
airflow dag-processor &
airflow triggerer $skip_logs &
wait
