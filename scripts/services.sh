#!/usr/bin/env bash
# The production-setup tests' servers, from Debian's packages, on loopback: PostgreSQL (Airflow's
# metadata database) and Redis (the Celery broker); and Debian's docker-compose, which validates
# docker/compose.yaml without a Docker daemon. Installs what is missing when apt-get can, starts the
# servers and creates the role the tests log in with (tests/test_production.py reads the same
# defaults). Where it cannot (no apt-get, not root), it says so and those tests skip, except under
# DATACOMP_REQUIRE_SERVICES=1 (.ci/run), where they fail.
set -euo pipefail
PG_PORT="${DATACOMP_TEST_PG_PORT:-5432}"
REDIS_PORT="${DATACOMP_TEST_REDIS_PORT:-6379}"
ROLE=datacomp

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
        echo "services: not root; start PostgreSQL and Redis yourself for the production-setup tests"; exit 0
    fi
fi

missing=()
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "services: no apt-get here; install ${missing[*]} for the production-setup tests"; exit 0
    fi
    echo "services: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PostgreSQL: Debian's cluster (the package creates one; a bare image may not have it)
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -q "^$version main$"; then
    $sudo pg_createcluster "$version" main -p "$PG_PORT" >/dev/null
fi
if ! pg_lsclusters -h | grep -q "^$version *main .* online"; then
    $sudo pg_ctlcluster "$version" main start
fi
as_postgres() { if [ -n "$sudo" ]; then sudo -n -u postgres "$@"; else runuser -u postgres -- "$@"; fi; }
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
if [ "$(as_postgres psql -p "$port" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != "1" ]; then
    as_postgres psql -p "$port" -qc "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$ROLE'"
fi
echo "services: PostgreSQL $version on 127.0.0.1:$port (role $ROLE)"

# Redis: no persistence, loopback only
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
        --logfile /tmp/datacomp-test-redis.log
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
echo "services: Redis on 127.0.0.1:$REDIS_PORT"
