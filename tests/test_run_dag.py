"""scripts/run_dag.py against a fake Airflow REST API (http.server): following the scheduled run instead
of triggering a second one, triggering with a conf, renewing the JWT on a 401, retrying a busy server,
reporting failed task instances, --after."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_dag.py"
spec = importlib.util.spec_from_file_location("run_dag", SCRIPT)
run_dag = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_dag)

NOW = datetime(2026, 12, 4, 12, tzinfo=timezone.utc)
PAST = "2026-12-04T00:00:00Z"
FUTURE = "2026-12-05T00:00:00Z"


def run(run_id, state, run_type="manual", run_after="2026-12-04T11:00:00Z"):
    return {"dag_run_id": run_id, "state": state, "run_type": run_type, "run_after": run_after,
            "logical_date": run_after if run_type == "scheduled" else None}


def dag(paused=True, next_run=PAST):
    return {"dag_id": "d", "is_paused": paused, "is_stale": False, "next_dagrun_run_after": next_run,
            "next_dagrun_logical_date": next_run, "timetable_description": "At 00:00"}


# -- the decision -----------------------------------------------------------------------------------
def test_a_paused_due_dag_follows_the_run_unpausing_starts():
    plan = run_dag.decide(dag(paused=True), [], {}, NOW)
    assert plan["action"] == "follow" and plan["run_id"] is None
    assert plan["due"] == datetime(2026, 12, 4, tzinfo=timezone.utc)
    assert plan["why"].startswith("unpausing starts the run scheduled for 2026-12-04T00:00:00Z")


def test_an_unpaused_dag_follows_the_scheduled_run_already_running():
    runs = [run("scheduled__x", "running", "scheduled", PAST), run("manual__old", "success")]
    plan = run_dag.decide(dag(paused=False, next_run=FUTURE), runs, {}, NOW)
    assert plan["action"] == "follow" and plan["run_id"] == "scheduled__x"
    # a finished scheduled run is not followed, nor one whose next run lies ahead
    runs[0]["state"] = "success"
    assert run_dag.decide(dag(paused=False, next_run=FUTURE), runs, {}, NOW)["action"] == "trigger"


def test_a_conf_or_no_schedule_triggers():
    plan = run_dag.decide(dag(paused=True), [], {"scale": "tiny"}, NOW)
    assert plan["action"] == "trigger" and plan["due"] is not None and "without the conf" in plan["why"]
    plan = run_dag.decide(dag(paused=False, next_run=None) | {"next_dagrun_logical_date": None}, [], {}, NOW)
    assert plan == {"action": "trigger", "run_id": None, "due": None, "why": ""}


def test_the_scheduled_run_is_matched_by_its_run_after():
    due = datetime(2026, 12, 4, tzinfo=timezone.utc)
    new = [run("manual__1", "queued"), run("scheduled__a", "queued", "scheduled", "2026-12-03T00:00:00Z"),
           run("scheduled__b", "queued", "scheduled", PAST)]
    assert run_dag.find_scheduled(due, new) == "scheduled__b"
    assert run_dag.find_scheduled(due, new[:1]) is None


# -- against a fake API server ----------------------------------------------------------------------
class FakeAirflow:
    """One DAG `d`. Each GET of its runs is a scheduler loop: queued -> running -> the run's final state.
    Unpausing a paused due DAG makes its scheduled run `sched_delay` loops later."""

    def __init__(self, dag_doc, runs=(), final="success", sched_delay=0, fail_first=0, expire_tokens_after=None):
        self.dag = dag_doc
        self.runs = [dict(r) for r in runs]
        self.final = final
        self.sched_delay = sched_delay
        self.pending_sched = None
        self.fail_first = fail_first  # answer this many requests 503 (a busy server)
        self.expire_tokens_after = expire_tokens_after  # reject a token after this many uses
        self.token_uses = {}
        self.tokens = 0
        self.triggered, self.patched, self.log = [], [], []
        self.lock = threading.Lock()

    def loop(self):
        for r in self.runs:
            if r["state"] == "queued":
                r["state"] = "running"
            elif r["state"] == "running":
                r["state"] = r.get("final", self.final)
        if self.pending_sched is not None:
            if self.pending_sched == 0:
                due = self.dag["next_dagrun_run_after"]
                self.runs.append(run(f"scheduled__{due}", "queued", "scheduled", due))
                self.dag["next_dagrun_run_after"] = FUTURE
                self.pending_sched = None
            else:
                self.pending_sched -= 1

    def handle(self, method, path, query, body, auth):
        self.log.append(f"{method} {path}")
        if self.fail_first > 0:
            self.fail_first -= 1
            return 503, {"detail": "busy"}
        if path == "/auth/token":
            if body != {"username": "admin", "password": "secret"}:
                return 401, {"detail": "bad credentials"}
            self.tokens += 1
            return 201, {"access_token": f"token{self.tokens}"}
        token = auth.removeprefix("Bearer ")
        if token not in {f"token{i}" for i in range(1, self.tokens + 1)}:
            return 401, {"detail": "no token"}
        uses = self.token_uses[token] = self.token_uses.get(token, 0) + 1
        if self.expire_tokens_after is not None and uses > self.expire_tokens_after:
            return 401, {"detail": "token expired"}
        if path == "/api/v2/dags/d":
            if method == "PATCH":
                self.patched.append(body)
                if self.dag["is_paused"] and not body["is_paused"]:
                    due = run_dag.parse_time(self.dag["next_dagrun_run_after"])
                    if due is not None and due <= datetime.now(timezone.utc):
                        self.pending_sched = self.sched_delay
                self.dag["is_paused"] = body["is_paused"]
            return 200, self.dag
        if path == "/api/v2/dags/d/dagRuns" and method == "POST":
            assert body["logical_date"] is None
            self.triggered.append(body)
            self.runs.append(run(body["dag_run_id"], "queued") | {"conf": body["conf"]})
            return 200, self.runs[-1]
        if path == "/api/v2/dags/d/dagRuns":
            self.loop()
            runs = list(self.runs)
            if "run_after_gte" in query:
                since = run_dag.parse_time(query["run_after_gte"][0])
                runs = [r for r in runs if run_dag.parse_time(r["run_after"]) >= since]
            if query.get("order_by") == ["-id"]:
                runs.reverse()
            return 200, {"dag_runs": runs, "total_entries": len(runs), "next_cursor": None}
        if path.startswith("/api/v2/dags/d/dagRuns/") and path.endswith("/taskInstances"):
            tis = [{"task_id": "ok", "map_index": -1, "state": "success"},
                   {"task_id": "boom", "map_index": -1, "state": "failed"},
                   {"task_id": "item", "map_index": 1, "state": "upstream_failed"},
                   {"task_id": "item", "map_index": 0, "state": "skipped"}]
            return 200, {"task_instances": tis, "total_entries": 4, "next_cursor": None}
        return 404, {"detail": "not found"}


@pytest.fixture
def serve(tmp_path, monkeypatch):
    servers = []

    def start(fake: FakeAirflow):
        class Handler(BaseHTTPRequestHandler):
            def _do(self):
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    status, doc = fake.handle(self.command, url.path, urllib.parse.parse_qs(url.query,
                                              keep_blank_values=True), body, self.headers.get("Authorization", ""))
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PATCH = _do

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        passwords = tmp_path / "passwords.json"
        passwords.write_text(json.dumps({"admin": "secret"}))
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        monkeypatch.setattr(run_dag, "POLL_S", 0.01)
        return fake

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def past(hours=1):
    return (datetime.now(timezone.utc) - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_unpausing_follows_the_scheduled_run_and_triggers_nothing(serve, capsys):
    fake = serve(FakeAirflow(dag(paused=True, next_run=past()), sched_delay=2))
    assert run_dag.main(["d", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert fake.triggered == [] and fake.patched == [{"is_paused": False}]
    assert "following it instead of triggering a second run" in out
    assert f"scheduled__{fake.runs[0]['run_after']} success" in out


def test_a_conf_triggers_and_waits_for_the_scheduled_run_too(serve, capsys):
    # the triggered run finishes before the scheduler makes the scheduled one: it is still waited for
    fake = serve(FakeAirflow(dag(paused=True, next_run=past()), sched_delay=6))
    assert run_dag.main(["d", "--conf", '{"scale": "tiny"}', "--timeout", "5"]) == 0
    assert [t["conf"] for t in fake.triggered] == [{"scale": "tiny"}]
    assert {r["run_type"]: r["state"] for r in fake.runs} == {"manual": "success", "scheduled": "success"}
    assert "without the conf: waiting for it as well" in capsys.readouterr().out


def test_a_failed_run_exits_1_listing_the_tasks_that_did_not_succeed(serve, capsys):
    fake = serve(FakeAirflow(dag(paused=False, next_run=None), final="failed"))
    assert run_dag.main(["d", "--timeout", "5"]) == 1
    out, err = capsys.readouterr()
    run_id = fake.triggered[0]["dag_run_id"]
    assert f"triggered d run {run_id}" in out and fake.patched == []
    assert f"{run_id} task boom[-1]: failed" in out and f"{run_id} task item[1]: upstream_failed" in out
    assert "task ok" not in out and "item[0]" not in out
    assert "runs that did not succeed" in err


def test_a_401_gets_a_new_token_and_a_busy_server_is_retried(serve):
    fake = serve(FakeAirflow(dag(paused=False, next_run=None), fail_first=2, expire_tokens_after=3))
    assert run_dag.main(["d", "--timeout", "5"]) == 0
    assert fake.tokens >= 2 and len(fake.triggered) == 1


def test_wrong_credentials_are_a_clear_error(serve, tmp_path, capsys):
    serve(FakeAirflow(dag()))
    (tmp_path / "passwords.json").write_text(json.dumps({"admin": "wrong"}))
    assert run_dag.main(["d", "--timeout", "5"]) == 1
    assert "POST /auth/token as 'admin' answered 401" in capsys.readouterr().err


def test_after_waits_for_the_runs_made_since_then(serve, capsys):
    runs = [run("old", "failed", "asset_triggered", past(5)), run("new1", "running", "asset_triggered", past(0)),
            run("new2", "queued", "asset_triggered", past(0))]
    fake = serve(FakeAirflow(dag(paused=False, next_run=None), runs=runs))
    assert run_dag.main(["d", "--after", past(1), "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "new1 success, new2 success" in out and "old" not in out
    assert fake.triggered == [] and fake.patched == []


def test_after_ends_the_polls_asked_for_after_every_run_finished(serve, monkeypatch):
    """--settle 1 (the demo's evaluation, whose runs all exist once training's wait ends) stops at the
    first poll that finds every run finished; the default waits three such polls for late runs."""
    polls = []
    runs_since = run_dag.Api.runs_since
    monkeypatch.setattr(run_dag.Api, "runs_since", lambda self, *a: polls.append(1) or runs_since(self, *a))
    serve(FakeAirflow(dag(paused=False, next_run=None), runs=[run("done", "success", "asset_triggered", past(0))]))
    assert run_dag.main(["d", "--after", past(1), "--timeout", "5", "--settle", "1"]) == 0
    assert len(polls) == 1
    polls.clear()
    assert run_dag.main(["d", "--after", past(1), "--timeout", "5"]) == 0
    assert len(polls) == 3


@pytest.mark.parametrize("settle", ["0", "-1"])
def test_a_settle_below_one_is_a_clear_error(settle, capsys):
    with pytest.raises(SystemExit):
        run_dag.main(["d", "--after", past(1), "--settle", settle])
    assert "--settle must be 1 or more" in capsys.readouterr().err
