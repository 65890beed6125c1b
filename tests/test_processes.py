"""Processes a build starts die with it, and one build at a time holds an open pool version.

What a user does: kill -9 a build (or Airflow ends its task) and start it again at once; start two
builds on one storage root; find the lease of a build that died. And what the embedded default's
Airflow exposes: nothing beyond loopback.
"""

import datetime
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp_ops.core import lease, ledger, storage, versions
from datacomp_ops.core.layout import PoolLayout
from datacomp_ops.core.schema import compute_uid

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _processes(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` (a zombie's is empty)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _rows(base_url: str, paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        url, text = f"{base_url}/{path}", f"a picture at {path}"
        rows.append({"uid": compute_uid(text, url), "url": url, "text": text, "page_url": None, "wat_path": None})
    return sorted(rows, key=lambda r: r["uid"])


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="reads /proc")
def test_kill_9_of_a_download_takes_its_runner_along_and_a_rerun_accounts_for_every_url(tmp_path):
    """The runner and its download process die with the killed build; the rerun at once downloads afresh."""
    from datacomp_ops.core.config import load_config
    from datacomp_ops.download.partition import Partition, run_download
    from datacomp_ops.synthetic.server import serving

    root = tmp_path / "root"
    with serving(hang_seconds=60) as server:
        rows = _rows(server.base_url, [f"img/shape/red/circle/{i}.jpg" for i in range(12)]
                     + [f"hang/{i}.jpg" for i in range(4)])
        part = tmp_path / "part-0000-00000.parquet"
        pq.write_table(pa.Table.from_pylist(rows), part)
        settings = {"storage_root": str(root), "download.processes_count": 1, "download.thread_count": 8,
                    "download.retries": 0}
        build = _python(f"""
            from datacomp_ops.core.config import load_config
            from datacomp_ops.download.partition import Partition, run_download
            from datacomp_ops.core.layout import PoolLayout
            config = load_config(overrides={settings | {"download.timeout": 50}!r})
            run_download(Partition({str(part)!r}, {len(rows)}, 0), PoolLayout({str(root)!r}, "v1"), config)
        """)
        deadline = time.monotonic() + 90
        while len(_processes(str(root))) < 3:  # the build, the runner and its forked download process
            assert build.poll() is None, build.communicate()
            assert time.monotonic() < deadline, "img2dataset's runner did not start"
            time.sleep(0.2)
        time.sleep(1.0)  # downloading: the hanging URLs hold it
        build.kill()
        build.wait()
        deadline = time.monotonic() + 5
        while _processes(str(root)):
            assert time.monotonic() < deadline, f"left running: {_processes(str(root))}"
            time.sleep(0.1)
        (killed,) = list((root / "pool" / "v1" / "_tmp" / "download-part-0000-00000").iterdir())

        # the rerun, at once: its own attempt folder; the killed attempt's goes
        config = load_config(overrides=settings | {"download.timeout": 2})
        pool = PoolLayout(str(root), "v1")
        stats = run_download(Partition(str(part), len(rows), 0), pool, config)
    assert not killed.exists() and storage.ls(storage.join(pool.base, "_tmp"), "*") == []
    table = ledger.read(pool.ledger)
    ledger.check_accounts_for(table, [r["uid"] for r in rows], "rerun")
    assert ledger.counts(table) == {"downloaded": 12, "timeout": 4}
    assert stats["urls"] == len(rows)


def _contender(root: str, key: str, start_at: float) -> subprocess.Popen:
    """A build that opens a version at `start_at` and, having it, holds it until its stdin closes."""
    return _python(f"""
        import sys, time
        from datacomp_ops.core import versions
        time.sleep(max(0.0, {start_at} - time.time()))
        try:
            print("GOT", versions.open_version({root!r}, {key!r}), flush=True)
            sys.stdin.read()
        except versions.VersionBusy as exc:
            print("BUSY", exc, flush=True)
    """, stdin=subprocess.PIPE)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_builds_started_at_once_one_takes_the_version_the_others_are_told_who_has_it(where, tmp_path, request):
    root = str(tmp_path / "root") if where == "local" else request.getfixturevalue("s3_bucket") + "/root"
    start_at = time.time() + 3.0  # every contender reads the lease as free at the same moment
    procs = {key: _contender(root, key, start_at) for key in ("cli-a", "cli-b", "cli-c")}
    out = {key: p.stdout.readline().strip() for key, p in procs.items()}
    for p in procs.values():
        p.communicate("", timeout=60)
    winners = [k for k, line in out.items() if line == "GOT v0001"]
    assert len(winners) == 1, out
    for key, line in out.items():
        if key not in winners:
            assert line.startswith(f"BUSY pool version v0001 under {root} is held by build {winners[0]} (pid "), line
            assert f"on host {socket.gethostname()}) since " in line and "if its holder dies" in line
    # only the winner claimed the version
    claims = [storage.read_json(p)["run"] for p in storage.ls(storage.join(root, "pool", "_runs"), "*.json")]
    assert claims == winners


def test_a_second_datacomp_build_exits_2_naming_the_build_that_holds_the_version(tmp_path):
    root = str(tmp_path / "root")
    holder = _python(f"""
        import sys, time
        from datacomp_ops.core import versions
        print(versions.open_version({root!r}, "cli-first"), flush=True)
        with versions.holding({root!r}, "v0001", "cli-first"):
            sys.stdin.read()
    """, stdin=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "v0001"
    try:
        second = subprocess.run([sys.executable, "-m", "datacomp_ops.cli", "build", "--storage-root", root,
                                 "--crawl-id", "CC-SECOND", "--input", str(tmp_path / "wat.paths.gz")],
                                capture_output=True, text=True, timeout=120)
    finally:
        holder.communicate("", timeout=30)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"datacomp: error: pool version v0001 under {root} is held by build cli-first (pid {holder.pid} " \
           f"on host {socket.gethostname()}) since " in second.stderr
    assert "Traceback" not in second.stderr
    # the holder released it at its end: nothing of the second build was written, the lease is gone
    assert storage.ls(storage.join(root, "pool", "_runs"), "*.json") == [f"{root}/pool/_runs/cli-first.json"]
    assert not storage.exists(versions.lease_path(root, "v0001"))


@pytest.mark.slow
def test_two_datacomp_builds_at_once_one_builds_the_other_is_refused(tmp_path, small_crawl, embedded_models):
    root = str(tmp_path / "root")
    command = [sys.executable, "-m", "datacomp_ops.cli", "build", "--crawl-id", "CC-TWO", "--input",
               small_crawl["wat_listing"], "--storage-root", root, "--set", "download.timeout=5",
               "--set", "download.processes_count=1", "--set", "extract.spark_master=local[2]",
               "--set", f"evaluation.sets_dir={small_crawl['eval_dir']}",
               "--set", f"models.embedded_dir={embedded_models}"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not storage.exists(versions.lease_path(root, "v0001")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
            time.sleep(0.2)
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        out, _ = first.communicate(timeout=1500)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr[-3000:]
    assert "is held by build cli-" in second.stderr and f"(pid {first.pid} on host " in second.stderr
    assert first.returncode == 0, out[-3000:]
    assert "into pool version v0001" in out
    # the first build's ledger: every URL of the crawl once, as if it had run alone
    assert len(versions.runs(root, "v0001")) == 1  # the second build claimed nothing
    final = ledger.final_statuses(*versions.ledger_dirs(root, "v0001"))
    assert sorted(final["uid"].to_pylist()) == sorted(set(final["uid"].to_pylist()))
    assert final.num_rows == small_crawl["unique_uids"]
    assert not storage.exists(versions.lease_path(root, "v0001"))  # released at its end


def test_a_build_waits_for_the_holder_and_then_carries_on_or_opens_the_next_version(tmp_path):
    root = str(tmp_path / "root")
    for publish, expected in ((False, "v0001"), (True, "v0002")):
        holder = _python(f"""
            import time
            from datacomp_ops.core import storage
            from datacomp_ops.core import versions
            from datacomp_ops.core.layout import PoolLayout
            version = versions.open_version({root!r}, "cli-first-{publish}")
            with versions.holding({root!r}, version, "cli-first-{publish}"):
                print(version, flush=True)
                time.sleep(2)
                if {publish}:
                    storage.write_json(PoolLayout({root!r}, version).manifest, {{"version": version}})
        """)
        assert holder.stdout.readline().strip() == "v0001"
        start = time.monotonic()
        got = versions.open_version(root, f"cli-second-{publish}", wait=30)
        assert got == expected and time.monotonic() - start > 1.0
        assert holder.wait(timeout=30) == 0
        assert lease.release(versions.lease_path(root, got), f"cli-second-{publish}")


def _forge(root: str, version: str, **fields) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    record = {"holder": "cli-ghost", "host": socket.gethostname(), "pid": 0, "pid_start": None,
              "bound_to_pid": True, "acquired_at": now.isoformat(timespec="seconds"),
              "renewed_at": now.isoformat(timespec="seconds"),
              "expires_at": (now + datetime.timedelta(hours=1)).isoformat(timespec="seconds")} | fields
    storage.write_json(versions.lease_path(root, version), record)


def test_the_lease_of_a_dead_build_is_taken_over_and_a_live_one_is_not(tmp_path):
    root = str(tmp_path / "root")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    past = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)).isoformat()

    # a build of this host whose process is gone: at once, whatever its expiry
    _forge(root, "v0001", pid=dead.pid)
    assert versions.open_version(root, "cli-1") == "v0001"
    assert lease.read(versions.lease_path(root, "v0001"))["holder"] == "cli-1"
    # another host's build: only once its lease expired unrenewed
    _forge(root, "v0001", host="elsewhere", pid=1)
    with pytest.raises(versions.VersionBusy, match=r"held by build cli-ghost \(pid 1 on host elsewhere\) since "
                                                   r".*; it expires at .* if its holder dies"):
        versions.open_version(root, "cli-2")
    _forge(root, "v0001", host="elsewhere", pid=1, expires_at=past)
    assert versions.open_version(root, "cli-2") == "v0001"
    # an Airflow run's lease outlives the task process that wrote it: the run's next task renews it
    _forge(root, "v0001", holder="scheduled__2026-11-08", pid=dead.pid, bound_to_pid=False)
    with pytest.raises(versions.VersionBusy, match=r"held by run scheduled__2026-11-08 \(last renewed by pid "
                                                   r"\d+ on host .*\) since .*unless a task of that run renews it"):
        versions.open_version(root, "cli-3")
    with versions.holding(root, "v0001", "scheduled__2026-11-08", for_run=True):
        pass
    record = lease.read(versions.lease_path(root, "v0001"))
    assert record["holder"] == "scheduled__2026-11-08" and record["pid"] == os.getpid()
    with versions.holding(root, "v0001", "scheduled__2026-11-08", for_run=True, release=True):
        pass  # the run's last task
    assert lease.read(versions.lease_path(root, "v0001")) is None
    assert versions.open_version(root, "cli-3") == "v0001"


def test_an_airflow_runs_tasks_hold_the_version_between_them_and_another_runs_task_is_refused(tmp_path):
    root = str(tmp_path / "root")

    def task(run: str, release: bool = False) -> str:
        proc = _python(f"""
            from datacomp_ops.core import versions
            try:
                with versions.holding({root!r}, "v0001", {run!r}, for_run=True, release={release}):
                    print("WORKED", flush=True)
            except versions.VersionBusy as exc:
                print("REFUSED", exc, flush=True)
        """)
        return proc.communicate(timeout=60)[0].strip()

    assert task("manual__1") == "WORKED"  # its process has ended: the lease stays the run's
    assert task("manual__2").startswith("REFUSED pool version v0001 under ")
    assert "held by run manual__1" in task("manual__2")
    assert task("manual__1", release=True) == "WORKED"  # summarize
    assert task("manual__2") == "WORKED"


def test_the_heartbeat_renews_the_lease_and_a_build_that_lost_it_stops(tmp_path):
    root = str(tmp_path / "root")
    holder = _python(f"""
        import time
        from datacomp_ops.core import versions
        try:
            with versions.holding({root!r}, "v0001", "cli-slow"):
                print("HOLDING", flush=True)
                time.sleep(30)
        except versions.VersionBusy as exc:
            print("STOPPED", exc, flush=True)
    """, env=os.environ | {lease.TTL_ENV: "1"})
    assert holder.stdout.readline().strip() == "HOLDING"
    first = lease.read(versions.lease_path(root, "v0001"))
    time.sleep(1.5)
    renewed = lease.read(versions.lease_path(root, "v0001"))
    assert renewed["holder"] == "cli-slow" and renewed["expires_at"] > first["expires_at"]
    # as if its lease had lapsed and another build took it. A real taker reads its write back after a settle
    # and counts as having taken it only when it stuck: a renewal that read the file just before the forged
    # write lands just after it and wins, so the forgery is written again until it sticks, as a taker's is.
    for _ in range(20):
        _forge(root, "v0001", holder="cli-other", pid=os.getpid())
        time.sleep(0.1)
        if lease.read(versions.lease_path(root, "v0001"))["holder"] == "cli-other":
            break
    out, _ = holder.communicate(timeout=30)
    assert out.startswith("STOPPED pool version v0001 under ") and "build cli-slow lost its lease" in out
    assert "held by build cli-other" in out
    assert lease.read(versions.lease_path(root, "v0001"))["holder"] == "cli-other"  # not released by the loser


def _env_sh(**env: str) -> dict:
    """What scripts/env.sh exports, with `env` set before it is sourced."""
    out = subprocess.run(["bash", "-c", "source scripts/env.sh && env -0"], cwd=REPO, capture_output=True,
                         env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")} | env, check=True)
    return dict(line.split("=", 1) for line in out.stdout.decode().split("\0") if "=" in line)


def test_env_sh_binds_the_api_server_to_loopback_with_real_airflow_settings():
    import importlib.util

    import yaml

    exported = _env_sh()
    assert exported["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert _env_sh(AIRFLOW_HOST="0.0.0.0")["AIRFLOW__API__HOST"] == "0.0.0.0"
    # every AIRFLOW__SECTION__KEY that env.sh sets is an option of the installed Airflow (a misspelt one is ignored)
    package = Path(importlib.util.find_spec("airflow").origin).parent
    options = yaml.safe_load((package / "config_templates" / "config.yml").read_text())
    for name in (n for n in exported if n.startswith("AIRFLOW__")):
        _, section, key = name.lower().split("__", 2)
        assert key in (options.get(section) or {}).get("options", {}), f"{name}: no [{section}] {key} in Airflow"
