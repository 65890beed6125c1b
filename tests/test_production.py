"""The production setup on one machine: PostgreSQL as Airflow's metadata database, the Celery executor
with Redis as its broker, each Airflow component a process of its own (api-server, scheduler,
dag-processor, Celery workers), as docker/compose.yaml runs them.

The weekly schedule builds the newest crawl of the storage root's synthetic source: unpausing
`commonpool_build` starts that run, through the real scheduler and the Celery workers. While a
download task runs on worker A, worker A is killed (SIGKILL, every process of it); the scheduler
finds the task without a heartbeat, the task is retried on worker B, and the run still ends with
every URL in exactly one ledger status, the crawl's truth.

The servers come from Debian's packages (`bash scripts/services.sh`; `make test` and `.ci/run` run
it). Without them the tests skip with that message, except under DATACOMP_REQUIRE_SERVICES=1 (CI).
"""

import json
import os
import secrets
import signal
import subprocess
import time

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_dags import REPO, airflow_env

from conftest import _free_port, missing_service
from datacomp_ops.synthetic.crawl import CrawlSpec, generate_world
from datacomp_ops.synthetic.evalsuite import generate_eval_suite

pytestmark = pytest.mark.slow

POSTGRES = os.environ.get("DATACOMP_TEST_POSTGRES", "postgresql://datacomp:datacomp@127.0.0.1:5432/postgres")
REDIS = os.environ.get("DATACOMP_TEST_REDIS", "redis://127.0.0.1:6379")
CRAWL = "CC-SYNTH-2026-45"
HEARTBEAT_TIMEOUT_S = 40


def _services() -> None:
    """Skip (fail in CI) with what is missing when PostgreSQL or Redis does not answer."""
    import psycopg2
    import redis

    try:
        psycopg2.connect(POSTGRES, connect_timeout=3).close()
        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach them means the same
        missing_service(f"needs PostgreSQL at {POSTGRES} and Redis at {REDIS} (`bash scripts/services.sh` installs "
                        f"and starts both on loopback): {exc}")


class Postgres:
    """Queries on the test's own metadata database."""

    def __init__(self, url: str):
        import psycopg2

        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True

    def rows(self, sql: str, *args) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()


def _admin(sql: str) -> None:
    """CREATE/DROP DATABASE, which must run outside a transaction."""
    import psycopg2

    conn = psycopg2.connect(POSTGRES)
    conn.autocommit = True
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def _tree(pid: int) -> list:
    import psutil

    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def celery_build(tmp_path_factory, image_server, embedded_models):
    """The whole scenario, once; the tests below check what it left."""
    _services()
    base = tmp_path_factory.mktemp("production")
    root = base / "root"
    truth = generate_world(root / "synthetic", CrawlSpec(n_urls=300, seed=11, base_url=image_server.base_url,
                                                         urls_per_file=150, crawl_id=CRAWL), 1)[0]
    generate_eval_suite(root / "synthetic" / "eval")
    config = base / "config.yaml"
    config.write_text(json.dumps({
        "storage_root": str(root), "models": {"embedded_dir": embedded_models},
        "download": {"allowed_private_addresses": ["127.0.0.1/32"], "timeout": 5, "retries": 0,
                     "processes_count": 1, "number_sample_per_shard": 100},
        "extract": {"urls_per_partition": 100}, "metadata": {"batch_size": 32}, "publish": {"tiny_pool_size": 50},
    }))

    db = f"airflow_{secrets.token_hex(4)}"
    _admin(f"CREATE DATABASE {db}")
    db_url = POSTGRES.rsplit("/", 1)[0] + "/" + db
    broker_db = 1 + int(secrets.token_hex(1), 16) % 15  # a Redis database of its own
    port = _free_port()
    home = base / "airflow"
    env = airflow_env(
        home, DATACOMP_CONFIG=str(config),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=db_url.replace("postgresql://", "postgresql+psycopg2://"),
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        # only the build runs: its Asset events start none of the downstream DAGs (paused)
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
        AIRFLOW__CELERY__BROKER_URL=f"{REDIS}/{broker_db}",
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+{db_url}",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(16),
        AIRFLOW__API__SECRET_KEY=secrets.token_hex(16),
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT_S),
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5",
        AIRFLOW__CORE__HOSTNAME_CALLABLE="celery_worker_name.hostname",
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    home.mkdir()
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(["airflow", "pools", "set", "gpu", "1", "GPU stages"], env=env, check=True, capture_output=True)
    procs: dict[str, subprocess.Popen] = {}
    logs = base / "logs"
    logs.mkdir()

    def start(name: str, *cmd: str, **extra: str) -> None:
        out = open(logs / f"{name}.log", "w")
        procs[name] = subprocess.Popen(["airflow", *cmd], env=env | extra, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)

    def worker(name: str) -> None:  # a CPU worker that also serves the gpu queue (no GPU machine here)
        start(f"worker-{name}", "celery", "worker", "--queues", "default,gpu", "--concurrency", "2",
              "--celery-hostname", f"{name}@%h", "--skip-serve-logs", "--without-mingle", "--without-gossip",
              DATACOMP_TEST_WORKER=f"worker-{name}")

    def tail() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(logs.glob("*.log")))

    pg = Postgres(db_url)
    try:
        start("api-server", "api-server", "--port", str(port))
        start("scheduler", "scheduler")
        start("dag-processor", "dag-processor")
        worker("a")
        deadline = time.monotonic() + 300
        while not pg.rows("SELECT 1 FROM dag WHERE dag_id = 'commonpool_build'"):
            assert time.monotonic() < deadline, f"the DAGs were not parsed:\n{tail()}"
            time.sleep(2)
        subprocess.run(["airflow", "dags", "unpause", "commonpool_build"], env=env, check=True, capture_output=True)

        # worker A dies while it runs a download
        killed = None
        while killed is None:
            running = pg.rows("SELECT map_index, try_number FROM task_instance WHERE dag_id = 'commonpool_build' "
                              "AND task_id = 'download' AND state = 'running' AND hostname = 'worker-a'")
            if running:
                time.sleep(1.5)  # into its download
                tree = _tree(procs["worker-a"].pid)
                for proc in tree:
                    proc.kill()
                killed = {"map_index": running[0][0], "try_number": running[0][1], "processes": len(tree)}
                break
            # queued and running are both on the way; only an ended run means no download will come
            ended = pg.rows("SELECT state FROM dag_run WHERE dag_id = 'commonpool_build' "
                            "AND state IN ('success', 'failed')")
            assert not ended and time.monotonic() < deadline + 600, f"no download ran on worker A ({ended}):\n{tail()}"
            time.sleep(0.3)
        worker("b")

        deadline = time.monotonic() + 1200
        while True:
            runs = pg.rows("SELECT run_id, state, run_type FROM dag_run WHERE dag_id = 'commonpool_build'")
            if runs and all(state in ("success", "failed") for _, state, _ in runs):
                break
            assert time.monotonic() < deadline, f"the run did not finish: {runs}\n{tail()}"
            time.sleep(3)
        assert [(state, kind) for _, state, kind in runs] == [("success", "scheduled")], tail()
        yield {"root": root, "truth": truth, "pg": pg, "killed": killed, "run_id": runs[0][0], "logs": logs,
               "tail": tail}
    finally:
        for name, proc in procs.items():
            for p in _tree(proc.pid):
                p.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for p in _tree(proc.pid):
                    p.kill()
        pg.conn.close()
        import redis

        redis.Redis.from_url(f"{REDIS}/{broker_db}").flushdb()
        _admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_scheduled_build_runs_on_celery_workers_with_postgres(celery_build):
    from datacomp_ops.core import ledger, versions

    pg, root = celery_build["pg"], celery_build["root"]
    # every task ran on a Celery worker: CPU stages from the default queue, GPU stages from the gpu queue
    tis = pg.rows("SELECT task_id, map_index, state, queue, hostname FROM task_instance WHERE run_id = %s",
                  celery_build["run_id"])
    assert tis and {state for _, _, state, _, _ in tis} <= {"success", "skipped"}, tis
    queues = {task: queue for task, _, _, queue, _ in tis}
    assert queues["metadata"] == queues["prepare_models"] == "gpu"
    assert queues["download"] == queues["extract_urls"] == queues["publish"] == "default"
    assert {host for *_, host in tis if host} <= {"worker-a", "worker-b"}

    # the outputs: a published pool version whose ledger is the crawl's truth, URL for URL
    manifest = json.loads((root / "pool" / "v0001" / "manifest.json").read_text())
    assert manifest["crawls"] == [CRAWL]
    truth = pq.read_table(celery_build["truth"]["truth"]).to_pylist()
    expected = {r["uid"]: r["expected_final"] for r in truth}
    final = ledger.final_statuses(*versions.ledger_dirs(str(root), "v0001"))
    assert dict(zip(final["uid"].to_pylist(), final["status"].to_pylist())) == expected
    assert sum(manifest["ledger"]["statuses"].values()) == len(expected)
    assert manifest["scales"]["tiny"]["built"]
    # the Asset events that start the downstream DAGs are in Postgres
    events = pg.rows("SELECT asset.name FROM asset_event JOIN asset ON asset.id = asset_event.asset_id")
    # the complete tiny pool and the smallest incomplete scale (the larger ones hold the same samples)
    assert {name for (name,) in events} == {"commonpool_tiny", "commonpool_small"}


def test_a_killed_worker_s_task_is_retried_on_another(celery_build):
    """Worker A was killed while it ran a download; the task's next try ran on worker B."""
    from datacomp_ops.core import ledger
    from datacomp_ops.core.layout import PoolLayout

    pg, killed = celery_build["pg"], celery_build["killed"]
    assert killed["processes"] >= 2  # the worker and its task's processes, all killed
    tries = pg.rows("SELECT try_number, state, hostname FROM task_instance_history WHERE run_id = %s AND "
                    "task_id = 'download' AND map_index = %s ORDER BY try_number", celery_build["run_id"],
                    killed["map_index"])
    final = pg.rows("SELECT try_number, state, hostname FROM task_instance WHERE run_id = %s AND "
                    "task_id = 'download' AND map_index = %s", celery_build["run_id"], killed["map_index"])
    assert tries[0][0] == killed["try_number"] and tries[0][1] == "failed" and tries[0][2] == "worker-a", tries
    assert final[0][1] == "success" and final[0][2] == "worker-b" and final[0][0] > killed["try_number"], final
    # the killed try left nothing half-written: each partition's ledger part holds each of its URLs once
    pool = PoolLayout(str(celery_build["root"]), "v0001")
    table = ledger.read(pool.ledger)
    uids = table.filter(pc.equal(table["stage"], "download"))["uid"].to_pylist()
    assert len(uids) == len(set(uids))
    scheduler_log = (celery_build["logs"] / "scheduler.log").read_text()
    assert "heartbeat" in scheduler_log.lower()
