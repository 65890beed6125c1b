"""Trigger a DAG run through the running scheduler and wait for it to finish.

    python scripts/run_dag.py commonpool_build --conf '{"config_overrides": {...}}' [--timeout 900]

Exits 0 when the run succeeds, 1 when it fails or times out, printing the
state of every task instance that did not succeed.
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
    args = parser.parse_args()

    deadline = time.monotonic() + args.timeout
    # put the DAG in the database now instead of waiting for the DAG processor's next pass
    airflow("dags", "reserialize")
    run_id = f"demo__{time.strftime('%Y%m%dT%H%M%S')}"
    airflow("dags", "unpause", args.dag_id)
    airflow("dags", "trigger", args.dag_id, "--run-id", run_id, "--conf", args.conf)
    print(f"triggered {args.dag_id} run {run_id}; waiting for the scheduler", flush=True)
    state, last = "queued", None
    while time.monotonic() < deadline:
        runs = [r for r in json_out("dags", "list-runs", args.dag_id) if r.get("run_id") == run_id]
        state = runs[0]["state"] if runs else "unknown"
        if state != last:
            print(f"  run state: {state}", flush=True)
            last = state
        if state in ("success", "failed"):
            break
        time.sleep(5)
    if state != "success":
        for ti in json_out("tasks", "states-for-dag-run", args.dag_id, run_id):
            if ti.get("state") != "success":
                print(f"  task {ti.get('task_id')}[{ti.get('map_index')}]: {ti.get('state')}")
        print(f"run {run_id} ended in state {state}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
