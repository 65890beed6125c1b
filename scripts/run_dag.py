"""Trigger a DAG run through the running scheduler and wait for it to finish.

    python scripts/run_dag.py commonpool_build --conf '{"config_overrides": {...}}' [--timeout 900]
    python scripts/run_dag.py train_clip --after 2026-11-29T10:00:00Z   # the runs Asset events started

It talks to the running API server over its REST API (/api/v2 at http://127.0.0.1:$AIRFLOW__API__PORT, or
$AIRFLOW__API__BASE_URL), as the simple auth manager's admin (password in $AIRFLOW_HOME/
simple_auth_manager_passwords.json.generated), polling every 5 s: no `airflow` CLI start per poll.

It first waits for the DAG processor to have parsed the DAG, and unpauses it. A scheduled DAG whose
latest schedule is due (its next run's time is past: unpausing starts that run, or the scheduler is
about to) or whose scheduled run is already queued or running is not triggered again: without --conf
that run does the same work, so it follows that run instead. With a --conf the scheduled run would
not carry, it triggers its own run and waits for the scheduled one too.

With --after it triggers nothing: it waits for the runs the scheduler made from that time on (at least
one, and no new one for three polls), as an Asset-scheduled DAG's runs follow its upstream's.

Exits 0 when every run it waits for succeeds, 1 when one fails or times out, printing the state of
every task instance that did not succeed. The API server being busy or briefly away (a loaded small
machine) is waited for until the timeout, not fatal.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

POLL_S = 5.0
DONE = ("success", "failed")
ACTIVE = ("queued", "running")
# one request's wait for an answer: a loaded API server (2 cores shared with the pipeline) is slow
REQUEST_TIMEOUT_S = 30.0
# after the deadline, how long the report (task instance states) may still wait for the API server
REPORT_GRACE_S = 60.0


class ApiError(RuntimeError):
    """An answer that retrying will not change (a 4xx other than 401, bad credentials)."""


class ApiUnavailable(TimeoutError):
    """The API server did not answer before the deadline."""


def base_url() -> str:
    if url := os.environ.get("AIRFLOW__API__BASE_URL", "").strip():
        return url.rstrip("/")
    host = os.environ.get("AIRFLOW__API__HOST", "").strip()
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{os.environ.get('AIRFLOW__API__PORT', '8080')}"


def passwords_file() -> str:
    if path := os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"):
        return path
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return os.path.join(home, "simple_auth_manager_passwords.json.generated")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


class Api:
    """A small client of Airflow's REST API: JWT from /auth/token (renewed on a 401), retries on
    network errors and 5xx answers until `deadline` (time.monotonic())."""

    def __init__(self, url: str, deadline: float, password_file: str | None = None, poll_s: float | None = None):
        self.url = url
        self.deadline = deadline
        self.password_file = password_file or passwords_file()
        self.poll_s = POLL_S if poll_s is None else poll_s
        self.token: str | None = None
        self.tokens_fetched = 0
        self._down = False  # a "not answering" line printed, none since it answered

    # -- transport -------------------------------------------------------------------------------
    def _send(self, method: str, path: str, params: dict | None, body, token: str | None):
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        timeout = max(1.0, min(REQUEST_TIMEOUT_S, self.deadline - time.monotonic()))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                detail = json.loads(raw) if raw else None
            except ValueError:
                detail = raw.decode(errors="replace")[:500]
            return e.code, detail

    def _with_retries(self, method: str, path: str, params, body, auth: bool):
        """(status, JSON) of the first answer that is not a 5xx; network errors and 5xx are retried."""
        while True:
            if auth and self.token is None:
                self.token = self._new_token()
            try:
                status, doc = self._send(method, path, params, body, self.token if auth else None)
                if status < 500:
                    if self._down:
                        print("  the API server answers again", flush=True)
                        self._down = False
                    return status, doc
                problem = f"HTTP {status}: {str(doc)[:200]}"
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                # URLError (refused, reset), socket timeouts, a truncated or non-JSON answer
                problem = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise ApiUnavailable(f"the API server at {self.url} did not answer {method} {path}: {problem}")
            if not self._down:
                print(f"  the API server at {self.url} is not answering ({problem}); retrying", flush=True)
                self._down = True
            time.sleep(min(self.poll_s, remaining))

    def _new_token(self) -> str:
        self.tokens_fetched += 1
        try:
            with open(self.password_file) as f:
                users = json.load(f)
        except FileNotFoundError:
            users = None
        except (OSError, ValueError) as e:
            raise ApiError(f"cannot read the API server's passwords from {self.password_file}: {e}") from e
        if users:
            username = "admin" if "admin" in users else next(iter(users))
            status, doc = self._with_retries("POST", "/auth/token", None,
                                             {"username": username, "password": users[username]}, auth=False)
        else:
            # no generated passwords: [core] simple_auth_manager_all_admins hands tokens out without one
            status, doc = self._with_retries("GET", "/auth/token", None, None, auth=False)
        if status in (200, 201) and isinstance(doc, dict) and doc.get("access_token"):
            return doc["access_token"]
        if users is None:
            raise ApiError(f"no password file at {self.password_file} (the API server writes it when it "
                           f"starts), and GET /auth/token answered {status}: {doc}")
        raise ApiError(f"POST /auth/token as {username!r} answered {status}: {doc}")

    def request(self, method: str, path: str, params: dict | None = None, body=None, allow: tuple = ()):
        """The answer's JSON; None for an error status in `allow`. A 401 gets a new token, once."""
        status, doc = self._with_retries(method, path, params, body, auth=True)
        if status == 401:
            self.token = None
            status, doc = self._with_retries(method, path, params, body, auth=True)
        if status in allow:
            return None
        if status >= 400:
            raise ApiError(f"{method} {path} answered {status}: {doc}")
        return doc

    # -- the endpoints run_dag uses ----------------------------------------------------------------
    def dag(self, dag_id: str) -> dict | None:
        return self.request("GET", f"/api/v2/dags/{quote(dag_id)}", allow=(404,))

    def unpause(self, dag_id: str) -> dict:
        return self.request("PATCH", f"/api/v2/dags/{quote(dag_id)}", body={"is_paused": False})

    def recent_runs(self, dag_id: str) -> list[dict]:
        """The newest 100 runs, newest made first (by id: a scheduled run's run_after lies in the past)."""
        doc = self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns", {"order_by": "-id", "limit": 100})
        return list(doc["dag_runs"])

    def runs_since(self, dag_id: str, since: str) -> list[dict]:
        return self._paged(f"/api/v2/dags/{quote(dag_id)}/dagRuns",
                           {"run_after_gte": since, "order_by": "id"}, "dag_runs")

    def trigger(self, dag_id: str, run_id: str, conf: dict) -> None:
        # 409: a retried POST whose first try made the run (its answer lost on the way)
        self.request("POST", f"/api/v2/dags/{quote(dag_id)}/dagRuns",
                     body={"dag_run_id": run_id, "logical_date": None, "conf": conf}, allow=(409,))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self._paged(f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances",
                           {"order_by": "id"}, "task_instances")

    def import_errors(self) -> list[dict]:
        return list(self.request("GET", "/api/v2/importErrors", {"limit": 100})["import_errors"])

    def _paged(self, path: str, params: dict, key: str) -> list[dict]:
        items, cursor = [], ""
        while True:
            doc = self.request("GET", path, {**params, "limit": 100, "cursor": cursor})
            items.extend(doc[key])
            cursor = doc.get("next_cursor")
            if not cursor:
                return items


def quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


# -- what to do: follow the scheduled run, or trigger one ------------------------------------------
def decide(dag: dict, runs: list[dict], conf: dict, now: datetime) -> dict:
    """Whether to trigger a run or follow the scheduled one that does the same work.

    `dag`: GET /dags/{id}, read before unpausing; `runs`: its recent runs, newest first. Returns
    {"action": "follow" or "trigger", "run_id": the scheduled run already made that it follows, "due": the
    run_after of the scheduled run that unpausing (or the scheduler's next loop) is about to make, "why":
    the line to print}. With a conf it triggers (a scheduled run would not carry the conf), and waits for
    a due scheduled run as well."""
    due = parse_time(dag.get("next_dagrun_run_after"))
    due = due if due is not None and due <= now else None
    when = dag.get("next_dagrun_logical_date") or dag.get("next_dagrun_run_after")
    schedule = dag.get("timetable_description") or dag.get("timetable_summary") or "its schedule"
    starts = "unpausing starts" if dag.get("is_paused") else "the scheduler is starting"
    if conf:
        return {"action": "trigger", "run_id": None, "due": due,
                "why": f"  ({starts} the run scheduled for {when} too, without the conf: waiting for it as well)"
                       if due else ""}
    if due is not None:
        return {"action": "follow", "run_id": None, "due": due,
                "why": f"{starts} the run scheduled for {when} ({schedule}); following it instead of "
                       f"triggering a second run of the same work"}
    active = [r for r in runs if r.get("run_type") == "scheduled" and r.get("state") in ACTIVE]
    if active:
        run = active[0]
        return {"action": "follow", "run_id": run["dag_run_id"], "due": None,
                "why": f"the scheduler already started the run scheduled for "
                       f"{run.get('logical_date') or run.get('run_after')} ({schedule}): {run['dag_run_id']} "
                       f"({run['state']}); following it instead of triggering a second run of the same work"}
    return {"action": "trigger", "run_id": None, "due": None, "why": ""}


def find_scheduled(due: datetime, new_runs: list[dict]) -> str | None:
    """The scheduled run made for `due`, once the scheduler made it (`new_runs`: oldest first)."""
    scheduled = [r for r in new_runs if r.get("run_type") == "scheduled"]
    for r in scheduled:
        if parse_time(r.get("run_after")) == due:
            return r["dag_run_id"]
    return scheduled[0]["dag_run_id"] if scheduled else None


# -- waiting ----------------------------------------------------------------------------------------
def wait_for_dag(api: Api, dag_id: str, deadline: float) -> dict:
    """GET /dags/{id} once the DAG processor has parsed the DAG (it replaces `airflow dags reserialize`)."""
    said = False
    while True:
        dag = api.dag(dag_id)
        if dag is not None and not dag.get("is_stale"):
            return dag
        if time.monotonic() >= deadline:
            break
        if not said:
            print(f"waiting for the DAG processor to parse {dag_id}", flush=True)
            said = True
        time.sleep(min(api.poll_s, max(0.0, deadline - time.monotonic())))
    msg = (f"{dag_id} is not known to the API server at {api.url}" if dag is None
           else f"{dag_id} is stale (its file no longer defines it)")
    try:
        errors = api.import_errors()
    except (ApiError, ApiUnavailable):
        errors = []
    lines = [f"{msg} after the timeout: is the DAG processor running, and does the DAGs folder "
             f"({os.environ.get('AIRFLOW__CORE__DAGS_FOLDER', '?')}) define it?"]
    for e in errors:
        lines.append(f"  import error in {e.get('filename')}: {str(e.get('stack_trace', '')).strip()[-300:]}")
    raise ApiError("\n".join(lines))


def print_states(states: dict, last: dict | None) -> dict:
    if states != last:
        print("  runs: " + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none yet"), flush=True)
    return states


def report(api: Api, dag_id: str, failed: dict) -> None:
    """The state of each task instance that did not succeed, in each run that did not succeed."""
    api.deadline = max(api.deadline, time.monotonic() + REPORT_GRACE_S)
    for bad in failed:
        try:
            tis = api.task_instances(dag_id, bad)
        except (ApiError, ApiUnavailable) as e:
            print(f"  {bad}: could not read its task instances: {e}", flush=True)
            continue
        for ti in tis:
            if ti.get("state") not in ("success", "skipped"):
                print(f"  {bad} task {ti.get('task_id')}[{ti.get('map_index')}]: {ti.get('state')}", flush=True)


def trigger_and_wait(api: Api, dag_id: str, conf: dict, deadline: float) -> int:
    dag = wait_for_dag(api, dag_id, deadline)
    # the runs before anything starts; then the DAG's next scheduled run (a run the scheduler makes in
    # between is in neither the snapshot nor the DAG's next run: it is an active scheduled run below)
    before = {r["dag_run_id"] for r in api.recent_runs(dag_id)}
    dag = api.dag(dag_id) or dag
    plan = decide(dag, api.recent_runs(dag_id), conf, datetime.now(timezone.utc))
    if dag.get("is_paused"):
        api.unpause(dag_id)
    # the runs it waits for: None until the scheduler made the due scheduled run
    wanted: list[str | None] = []
    if plan["action"] == "follow":
        print(plan["why"], flush=True)
        wanted.append(plan["run_id"])
    else:
        run_id = f"demo__{time.strftime('%Y%m%dT%H%M%S')}"
        api.trigger(dag_id, run_id, conf)
        print(f"triggered {dag_id} run {run_id}; waiting for the scheduler", flush=True)
        if plan["why"]:
            print(plan["why"], flush=True)
        wanted.append(run_id)
        if plan["due"]:
            wanted.append(None)

    states, last = {}, None
    try:
        while True:
            runs = api.recent_runs(dag_id)
            if None in wanted:
                made = find_scheduled(plan["due"], [r for r in reversed(runs) if r["dag_run_id"] not in before])
                wanted = [made if w is None else w for w in wanted]
            # every new run (unpausing may start one beside the triggered one), and the followed run
            states = {r["dag_run_id"]: r["state"] for r in runs
                      if r["dag_run_id"] not in before or r["dag_run_id"] in wanted}
            last = print_states(states, last)
            if all(w in states for w in wanted) and all(v in DONE for v in states.values()):
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(min(api.poll_s, max(0.0, deadline - time.monotonic())))
    except ApiUnavailable as e:
        print(f"  {e}", file=sys.stderr)
    failed = {k: v for k, v in states.items() if v != "success"}
    report(api, dag_id, failed)
    for w in wanted:
        if w not in states:
            failed[w or f"the run scheduled for {plan['due'].isoformat()}"] = "never made"
    if failed:
        print(f"runs that did not succeed: {failed}", file=sys.stderr)
        return 1
    return 0


def await_runs(api: Api, dag_id: str, after: str, deadline: float, settle: int = 3) -> int:
    since = parse_time(after)
    states, last, settled = {}, None, 0
    print(f"waiting for the runs of {dag_id} made since {after}", flush=True)
    try:
        wait_for_dag(api, dag_id, deadline)
        while True:
            states = {r["dag_run_id"]: r["state"] for r in api.runs_since(dag_id, since.isoformat())
                      if r.get("run_after") and parse_time(r["run_after"]) >= since}
            last = print_states(states, last)
            # all finished, and no new run for `settle` polls (upstream events may still be on their way)
            settled = settled + 1 if states and all(v in DONE for v in states.values()) else 0
            if settled >= settle or time.monotonic() >= deadline:
                break
            time.sleep(min(api.poll_s, max(0.0, deadline - time.monotonic())))
    except ApiUnavailable as e:
        print(f"  {e}", file=sys.stderr)
    failed = {k: v for k, v in states.items() if v != "success"}
    report(api, dag_id, failed)
    if failed or not states:
        print(f"runs that did not succeed: {failed or 'none was made'}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_id")
    parser.add_argument("--conf", default="{}")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--after", default="", help="trigger nothing: wait for the runs made from this UTC time on")
    parser.add_argument("--settle", type=int, default=3, help="with --after: polls with every run finished and no "
                        "new one before the wait ends (1 when the upstream's runs are all finished already)")
    args = parser.parse_args(argv)
    if args.settle < 1:
        parser.error(f"--settle must be 1 or more (got {args.settle})")
    conf = json.loads(args.conf)
    if not isinstance(conf, dict):
        parser.error("--conf must be a JSON object")
    deadline = time.monotonic() + args.timeout
    api = Api(base_url(), deadline)
    try:
        if args.after:
            return await_runs(api, args.dag_id, args.after, deadline, args.settle)
        return trigger_and_wait(api, args.dag_id, conf, deadline)
    except (ApiError, ApiUnavailable) as e:
        print(str(e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
