"""Trigger a DAG run through the running scheduler and wait for it to finish.

    python scripts/run_dag.py commonpool_build --conf '{"config_overrides": {...}}' [--timeout 900]
    python scripts/run_dag.py train_clip --after 2026-11-29T10:00:00Z   # the runs Asset events started

With --after it triggers nothing: it waits for the runs the scheduler made from that time on (at least
one), as an Asset-scheduled DAG's runs follow its upstream's.

Also waits for any run that unpausing started (a scheduled DAG starts the run of
its latest schedule). Exits 0 when every such run succeeds, 1 when one fails or
times out, printing the state of every task instance that did not succeed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def airflow(*args: str) -> str:
    out = subprocess.run(["airflow", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return out.stdout


def json_out(*args: str):
    # the CLI may log warnings on stdout before the JSON document
    for line in reversed(airflow(*args, "-o", "json").splitlines()):
        if line.startswith(("[{", "[]", "{")):
            return json.loads(line)
    raise RuntimeError(f"no JSON in the output of airflow {' '.join(args)}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_id")
    parser.add_argument("--conf", default="{}")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--after", default="", help="trigger nothing: wait for the runs made from this UTC time on")
    args = parser.parse_args()
    if args.after:
        return await_runs(args.dag_id, args.after, args.timeout)

    deadline = time.monotonic() + args.timeout
    # put the DAG in the database now instead of waiting for the DAG processor's next pass
    airflow("dags", "reserialize")
    run_id = f"demo__{time.strftime('%Y%m%dT%H%M%S')}"
    before = {r["run_id"] for r in json_out("dags", "list-runs", args.dag_id)}
    # Unpausing a scheduled DAG also starts the run of its latest schedule when it has none yet;
    # that run builds the same crawl, so the demo waits for every new run, not only its own.
    airflow("dags", "unpause", args.dag_id)
    airflow("dags", "trigger", args.dag_id, "--run-id", run_id, "--conf", args.conf)
    print(f"triggered {args.dag_id} run {run_id}; waiting for the scheduler", flush=True)
    states, last = {}, None
    while time.monotonic() < deadline:
        states = {r["run_id"]: r["state"] for r in json_out("dags", "list-runs", args.dag_id)
                  if r["run_id"] not in before}
        if states != last:
            print("  runs: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())), flush=True)
            last = states
        if run_id in states and all(v in ("success", "failed") for v in states.values()):
            break
        time.sleep(5)
    failed = {k: v for k, v in states.items() if v != "success"} or ({} if run_id in states else {run_id: "unknown"})
    for bad in failed:
        for ti in json_out("tasks", "states-for-dag-run", args.dag_id, bad):
            if ti.get("state") not in ("success", "skipped"):
                print(f"  {bad} task {ti.get('task_id')}[{ti.get('map_index')}]: {ti.get('state')}")
    if failed:
        print(f"runs that did not succeed: {failed}", file=sys.stderr)
        return 1
    return 0


def _report(dag_id: str, states: dict) -> int:
    failed = {k: v for k, v in states.items() if v != "success"}
    for bad in failed:
        for ti in json_out("tasks", "states-for-dag-run", dag_id, bad):
            if ti.get("state") not in ("success", "skipped"):
                print(f"  {bad} task {ti.get('task_id')}[{ti.get('map_index')}]: {ti.get('state')}")
    if failed or not states:
        print(f"runs that did not succeed: {failed or 'none was made'}", file=sys.stderr)
        return 1
    return 0


def await_runs(dag_id: str, after: str, timeout: float) -> int:
    from datetime import datetime

    since = datetime.fromisoformat(after.replace("Z", "+00:00"))
    deadline = time.monotonic() + timeout
    states, last, settled = {}, None, 0
    print(f"waiting for the runs of {dag_id} made since {after}", flush=True)
    while time.monotonic() < deadline:
        states = {r["run_id"]: r["state"] for r in json_out("dags", "list-runs", dag_id)
                  if r.get("run_after") and datetime.fromisoformat(r["run_after"]) >= since}
        if states != last:
            print("  runs: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())), flush=True)
            last = states
        # all finished, and no new run for three polls (upstream events may still be on their way)
        settled = settled + 1 if states and all(v in ("success", "failed") for v in states.values()) else 0
        if settled >= 3:
            break
        time.sleep(5)
    return _report(dag_id, states)


if __name__ == "__main__":
    sys.exit(main())
