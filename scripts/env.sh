# Environment of the embedded default: source it (scripts/*.sh and the Makefile do).
# Everything lives inside the checkout: the virtualenv, AIRFLOW_HOME and the storage root.
DATACOMP_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DATACOMP_HOME
export PATH="$DATACOMP_HOME/.venv/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$DATACOMP_HOME/var/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$DATACOMP_HOME/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$DATACOMP_HOME/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=4
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
# SQLite lets one writer in at a time; the scheduler, the API server and the tasks all write, and on
# a busy small machine a write can wait longer than sqlite3's default 5 s: wait up to 60 s instead
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db?timeout=60"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=10
export AIRFLOW__API__PORT="${AIRFLOW_PORT:-8080}"
# tasks reach the API server here (Airflow's default assumes port 8080)
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW__API__PORT/execution/"
# Only this machine reaches the embedded default: its API server (the UI and the REST API) listens on
# loopback; AIRFLOW_HOST=0.0.0.0 opens it to the network
export AIRFLOW__API__HOST="${AIRFLOW_HOST:-127.0.0.1}"
# everything shares one small machine: a task the scheduler starts while the API server is still
# coming up (standalone starts both at once), or busy beside a download, must wait for it, not fail
export AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT=30 AIRFLOW__WORKERS__EXECUTION_API_RETRIES=10
# Spark runs in local mode on the embedded default; a cluster is only this connection.
if [ -z "${AIRFLOW_CONN_SPARK_DEFAULT:-}" ]; then
    export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]"}'
fi
export PYSPARK_PYTHON="$DATACOMP_HOME/.venv/bin/python"
export DATACOMP_STORAGE_ROOT="${DATACOMP_STORAGE_ROOT:-$DATACOMP_HOME/var/data}"
# no network but the package registries: never ask a hub or an update server
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled
