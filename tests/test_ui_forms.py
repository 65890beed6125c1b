"""Every DAG's trigger form in a real headless Chromium: its defaults, edited values, a refused value.

Airflow as `make demo` runs it (scripts/airflow_local.sh: standalone's api-server, scheduler, dag-processor, LocalExecutor) runs
on loopback with the embedded default: the storage root's synthetic crawl, the
config file that the tests' fast settings come from. The runs the forms create
must succeed; edited values must reach the run (typed as their Params say in
its conf, and for commonpool_build in the config of the run's spec); a value a
Param refuses must be shown refused, with the field named, and make no run.
Screenshots of each form land in $DATACOMP_TEST_ARTIFACTS (default
var/test-artifacts/ui).
"""

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from test_dags import REPO, airflow_env

from browser import Browser, _free_port, api_token, chromium
from datacomp_ops.core.config import load_config
from datacomp_ops.core.layout import SyntheticWorld
from datacomp_ops.synthetic.crawl import CrawlSpec, generate_world
from datacomp_ops.synthetic.evalsuite import generate_eval_suite
from datacomp_ops.synthetic.published import write_published_pool

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")]

ARTIFACTS = Path(os.environ.get("DATACOMP_TEST_ARTIFACTS", REPO / "var" / "test-artifacts")) / "ui"
# Field edits per DAG: element id suffix -> text typed into it
EDITS = {
    "commonpool_build": {"max_wat_files": "1", "download_timeout": "7", "threshold_nsfw_text": "0.2",
                         "crawl_id": "CC-SYNTH-2026-47"},
    "filtering_baselines": {"baselines": "no_filter\nb32_half = clip_score:arch=b32,fraction=0.5",
                            "pool_version": "v0001"},
    # sources stay empty: the embedded default's example dataset, imported under another name
    "import_dataset": {"name": "shapes", "pool_version": "p1"},
    # metadata stays empty: the embedded default's published pool, two of its files under another name
    "import_published": {"name": "published_two", "shards": "0-1"},
    "refresh_published": {"names": "published_two"},
    "train_clip": {"baselines": "no_filter", "pool_version": "v0001"},
    "evaluate_clip": {"pool_version": "v0001"},
}
# A value each DAG's form must refuse, with the field named in the message
INVALID = {"commonpool_build": ("crawl_id", "CC MAIN 2024/33"), "filtering_baselines": ("pool_version", "v 1!"),
           "import_dataset": ("name", "my data!"), "train_clip": ("pool_version", "v 1!"),
           "evaluate_clip": ("dataset", "my data!"), "import_published": ("name", "my pool!"),
           "refresh_published": ("names", "my pool!")}
# The order a person goes through the platform: each DAG's runs give the next its input
PIPELINE = ["commonpool_build", "filtering_baselines", "train_clip", "evaluate_clip", "import_dataset",
            "import_published", "refresh_published"]


class Api:
    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def __call__(self, path: str, method: str = "GET", body: dict | None = None):
        req = urllib.request.Request(f"{self.base}/api/v2{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=30).read())


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory, image_server, embedded_models):
    base = tmp_path_factory.mktemp("ui")
    root = base / "root"
    generate_world(root / "synthetic", CrawlSpec(n_urls=60, base_url=image_server.base_url, urls_per_file=30), 1)
    generate_eval_suite(root / "synthetic" / "eval")
    write_published_pool(SyntheticWorld.under(str(root)), image_server.base_url,
                         load_config(overrides={"storage_root": str(root), "models.embedded_dir": embedded_models}),
                         rows=40)
    config = base / "config.yaml"
    config.write_text(json.dumps({
        "storage_root": str(root), "models": {"embedded_dir": embedded_models},
        "download": {"allowed_private_addresses": ["127.0.0.1/32"], "timeout": 5, "retries": 0, "processes_count": 1, "number_sample_per_shard": 100},
        "extract": {"urls_per_partition": 100}, "metadata": {"batch_size": 32}, "publish": {"tiny_pool_size": 20},
        # a few steps of the tiny recipe, one subset per filtering run
        "training": {"samples_seen": 512, "num_checkpoints": 1, "workers": 1, "baselines": ["no_filter"]},
        # the builds' Asset events filter every scale they publish: three baselines, not all seventeen
        "filtering": {"baselines": ["no_filter", "basic_filter", "clip_score_b32_30 = clip_score:arch=b32,fraction=0.3"]},
    }))
    port = _free_port()
    home = base / "airflow"
    env = airflow_env(home, DATACOMP_CONFIG=str(config), AIRFLOW__API__PORT=str(port),
                      AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/")
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(["airflow", "pools", "set", "gpu", "1", "GPU stages"], env=env, check=True, capture_output=True)
    log = open(base / "standalone.log", "w")
    # what `make demo` runs: standalone's four components, listening on loopback only
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / "airflow_local.sh")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2)
                passwords = home / "simple_auth_manager_passwords.json.generated"
                if passwords.exists():
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"airflow standalone did not come up:\n{(base / 'standalone.log').read_text()[-3000:]}")
            time.sleep(2)
        password = json.loads(passwords.read_text())["admin"]
        yield {"url": url, "token": api_token(url, "admin", password), "root": root, "log": base / "standalone.log",
               "pgid": proc.pid, "port": port}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def _button(label: str, scope: str = "") -> str:
    """The last button labelled `label` (under CSS selector `scope`): a dialog's own comes after the page's."""
    return (f"[...document.querySelectorAll({json.dumps((scope + ' button').strip())})]"
            f".filter(b => b.textContent.trim() === {json.dumps(label)}).pop()")


@functools.cache
def _dag_params(dag_id: str) -> dict:
    """The DAG's Params (as the form shows them), from the DAG folder."""
    import sys

    from airflow.dag_processing.dagbag import DagBag

    if str(REPO / "dags") not in sys.path:
        sys.path.append(str(REPO / "dags"))
    params = DagBag(str(REPO / "dags")).dags[dag_id].params
    return {k: params.get_param(k) for k in params.keys()}


def _open_form(browser: Browser, url: str, dag_id: str) -> None:
    browser.goto(f"{url}/dags/{dag_id}")
    browser.wait_for(f"!!{_button('Trigger')}", 60, "the DAG page's Trigger button")
    # the page settles: the header re-renders as the DAG's details and runs load, which would close a dialog
    # opened earlier (an unpaused DAG's page polls every few seconds from then on, so quiet never comes)
    browser.wait_for(f"performance.getEntriesByType('resource').some(e => e.name.includes("
                     f"{json.dumps(f'/dags/{dag_id}/details')}))", 60, "the DAG's details")
    time.sleep(2)
    opened = ("[...document.querySelectorAll('[role=dialog]')].some(d => d.textContent.includes('Trigger Dag') "
              "&& d.getBoundingClientRect().height > 0)")
    for _ in range(3):  # a click during a re-render can be lost: a person clicks again
        browser.click(_button("Trigger"))
        try:
            browser.wait_for(opened, 10, "the trigger dialog")
            break
        except TimeoutError:
            continue
    else:
        raise AssertionError(f"{dag_id}: the Trigger button opens no dialog")
    time.sleep(1)


def _field(dag_id: str, field: str) -> str:
    """JS for a field's input: by its id, or (number inputs get generated ids) by the label that shows its title."""
    title = json.dumps(_dag_params(dag_id)[field].schema.get("title", field))
    return (f"(document.getElementById('element_{field}') || (() => {{"
            f" let e = [...document.querySelectorAll('[role=dialog] label, [role=dialog] p, [role=dialog] span')]"
            f".find(x => x.textContent.trim() === {title});"
            f" while (e && !e.querySelector('input, textarea')) e = e.parentElement;"
            f" return e ? e.querySelector('input, textarea') : null; }})())")


def _fill(browser: Browser, dag_id: str, field: str, text: str) -> None:
    """Unfold the field's section (one is open at a time) and type into it."""
    # a folded section keeps its fields in the page, hidden: a click on one lands outside the dialog and closes it
    present = f"(e => !!e && e.getBoundingClientRect().height > 0)({_field(dag_id, field)})"
    time.sleep(0.8)  # sections fold and unfold with an animation: let the last one finish
    if not browser.js(present):
        section = _dag_params(dag_id)[field].schema["section"]
        header = _button(section, "[role=dialog]")
        try:
            browser.wait_for(f"!!{header}", 10, f"section {section}")
        except TimeoutError:
            browser.screenshot(str(ARTIFACTS / f"{dag_id}-missing-{section}.png"))
            raise
        browser.click(header)
    try:
        browser.wait_for(present, 10, f"field {field}")
    except TimeoutError:
        browser.screenshot(str(ARTIFACTS / f"{dag_id}-missing-{field}.png"))
        ids = browser.js("[...document.querySelectorAll('[role=dialog] input, [role=dialog] textarea')].map(e => e.id)")
        raise AssertionError(f"{dag_id}: no field {field} in the form; inputs: {ids}") from None
    time.sleep(0.8)  # the section unfolds with an animation: click where the field ends up
    browser.type_into(_field(dag_id, field), text)


def _submit(browser: Browser, api: Api, dag_id: str, shot: Path) -> str:
    before = {r["dag_run_id"] for r in api(f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]}
    submit = _button("Trigger", "[role=dialog]")
    try:
        browser.wait_for(f"!!{submit}", 10, "the dialog's Trigger button")
    except TimeoutError:
        browser.screenshot(str(shot))
        texts = browser.js("[...document.querySelectorAll('[role=dialog] button')].map(b => b.textContent.trim())")
        raise AssertionError(f"{dag_id}: no Trigger button in the dialog; its buttons: {texts} ({shot})") from None
    browser.screenshot(str(shot))
    assert browser.js(f"{submit}.disabled") is False, f"{dag_id}: the form's Trigger button is disabled ({shot})"
    browser.click(submit)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs = [r for r in api(f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"] if r["dag_run_id"] not in before]
        if runs:
            return runs[0]["dag_run_id"]
        time.sleep(0.5)
    raise AssertionError(f"{dag_id}: submitting the form created no run ({shot})")


def test_every_dag_trigger_form_submits_with_defaults_and_with_edits_and_the_runs_succeed(airflow_ui):
    url, api = airflow_ui["url"], Api(airflow_ui["url"], airflow_ui["token"])
    expected = sorted(p.stem for p in (REPO / "dags").glob("*.py") if "@dag" in p.read_text())
    deadline = time.monotonic() + 120
    while sorted(d["dag_id"] for d in api("/dags")["dags"]) != expected:
        assert time.monotonic() < deadline, f"the DAG processor did not list {expected}"
        time.sleep(2)
    untested = set(expected) - (set(EDITS) & set(INVALID) & set(PIPELINE))
    assert not untested, f"give every DAG's form edits, a refused value and its place in PIPELINE: {untested}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for dag_id in PIPELINE:
        # with its defaults
        with _browser(url, airflow_ui["token"]) as browser:
            _open_form(browser, url, dag_id)
            sections = [p.schema.get("section") for p in _dag_params(dag_id).values() if p.schema.get("section")]
            if sections:  # the screenshot shows the first section's fields
                browser.click(_button(sections[0], "[role=dialog]"))
                time.sleep(1)
            run_id = _submit(browser, api, dag_id, ARTIFACTS / f"{dag_id}-defaults.png")
        _wait_for_runs(api, dag_id, airflow_ui["log"], f"run {run_id} from the form with its defaults")

        # with edited values (the DAG is unpaused now: its page polls, the dialog must stay open regardless)
        with _browser(url, airflow_ui["token"]) as browser:
            _open_form(browser, url, dag_id)
            for field, text in EDITS[dag_id].items():
                _fill(browser, dag_id, field, text)
            run_id = _submit(browser, api, dag_id, ARTIFACTS / f"{dag_id}-edited.png")
        conf = api(f"/dags/{dag_id}/dagRuns/{run_id}")["conf"]
        want = {field: _typed(_dag_params(dag_id)[field], text) for field, text in EDITS[dag_id].items()}
        assert {field: conf.get(field) for field in want} == want, f"{dag_id}: the run's conf {conf}"
        _wait_for_runs(api, dag_id, airflow_ui["log"], f"run {run_id} from the form with edited values")
        if dag_id == "commonpool_build":
            _check_build_spec(api, run_id, want)

        # a value its Param refuses: the dialog says which field and why, and no run is made
        field, text = INVALID[dag_id]
        runs = len(api(f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"])
        with _browser(url, airflow_ui["token"]) as browser:
            _open_form(browser, url, dag_id)
            _fill(browser, dag_id, field, text)
            browser.click(_button("Trigger", "[role=dialog]"))
            shown = (f"[...document.querySelectorAll('[role=dialog]')].some(d => d.innerText.includes("
                     f"{json.dumps(f'Invalid input for param {field}')}))")
            try:
                browser.wait_for(shown, 20, "the form's message about the refused value")
            finally:
                browser.screenshot(str(ARTIFACTS / f"{dag_id}-refused.png"))
        assert len(api(f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]) == runs
        if dag_id == "refresh_published":
            _check_refreshes(api, airflow_ui["log"])
        # paused again: the Asset events of the later DAGs' runs start no more of its runs
        api(f"/dags/{dag_id}", "PATCH", {"is_paused": True})


def _check_refreshes(api: Api, log) -> None:
    """Each refresh_published run started one import_published run per pool it refreshed, named after it;
    they queued while import_published was paused, and succeed once it runs."""
    triggered = {r["dag_run_id"] for r in api("/dags/import_published/dagRuns?limit=100")["dag_runs"]}
    for run in api("/dags/refresh_published/dagRuns?limit=100")["dag_runs"]:
        if run["run_type"] != "manual":  # the weekly run made when the DAG appeared, before any pool was
            continue
        names = (run["conf"] or {}).get("names") or ["published_example", "published_two"]
        want = {f"{run['dag_run_id']}__{name}" for name in names}
        assert want <= triggered, f"refresh run {run['dag_run_id']} started {triggered}, not {want}"
    api("/dags/import_published", "PATCH", {"is_paused": False})
    _wait_for_runs(api, "import_published", log, "the refreshes' runs")
    api("/dags/import_published", "PATCH", {"is_paused": True})


def _typed(param, text: str):
    """What the form sends for `text` typed into `param`'s field."""
    kinds = param.schema.get("type")
    kinds = set(kinds if isinstance(kinds, list) else [kinds])
    if "integer" in kinds:
        return int(text)
    if "number" in kinds:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    if "array" in kinds:  # a textarea, one item per line
        return text.split("\n")
    return text


def _check_build_spec(api: "Api", run_id: str, want: dict) -> None:
    """The edited values are what the run built with: its crawl and the config of its spec."""
    _dag_params("commonpool_build")  # puts dags/ on sys.path, as Airflow does
    from commonpool_build import CONFIG_PARAMS, THRESHOLD_PARAMS

    from datacomp_ops.core.config import config_from_dict
    from datacomp_ops.pool.models import running_threshold_key

    spec = api(f"/dags/commonpool_build/dagRuns/{run_id}/taskInstances/prepare/xcomEntries/return_value")["value"]
    for field, value in want.items():
        if field == "crawl_id":
            assert spec["crawl_id"] == value
            continue
        # a threshold field sets the threshold of the model that runs its role
        dotted = CONFIG_PARAMS.get(field) or running_threshold_key(config_from_dict(spec["config"]),
                                                                   THRESHOLD_PARAMS[field])
        section, _, key = dotted.rpartition(".")
        got = spec["config"][section][key] if section else spec["config"][key]
        assert got == value, f"{field} -> {dotted}: {got!r} in the run's config, typed {value!r}"


@contextlib.contextmanager
def _browser(url: str, token: str):
    browser = Browser()
    try:
        browser.login(url, token)
        yield browser
    finally:
        browser.close()


def _scheduler_lines(log, n: int = 40) -> str:
    lines = [line for line in Path(log).read_text(errors="replace").splitlines() if line.startswith("scheduler")]
    return "\n".join(line[:400] for line in lines[-n:])


def _wait_until_ended(api: Api, dag_id: str, log, what: str, timeout: float, backfill: bool = False) -> list:
    """The DAG's runs (only the backfill's, with `backfill`) once none is queued or running.

    Fails at once, with the scheduler's last lines, when standalone's scheduler has stopped heartbeating
    for two minutes: standalone does not restart a scheduler that died, so its queued runs would wait forever.
    """
    deadline, unhealthy_since = time.monotonic() + timeout, None
    while True:
        runs = [r for r in api(f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
                if not backfill or r["run_type"] == "backfill"]
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        states = [(r["dag_run_id"], r["state"]) for r in runs]
        health = api("/monitor/health")["scheduler"]["status"]
        unhealthy_since = None if health == "healthy" else unhealthy_since or time.monotonic()
        assert unhealthy_since is None or time.monotonic() - unhealthy_since < 120, \
            f"{dag_id}: {what}: the scheduler stopped ({states}); its last lines:\n{_scheduler_lines(log)}"
        assert time.monotonic() < deadline, \
            f"{dag_id}: {what} still running: {states}; the scheduler's last lines:\n{_scheduler_lines(log)}"
        time.sleep(5)


def _wait_for_runs(api: Api, dag_id: str, log, what: str) -> None:
    """Until no run of the DAG is queued or running; every run must have succeeded."""
    runs = _wait_until_ended(api, dag_id, log, what, 900)
    failed = [r["dag_run_id"] for r in runs if r["state"] != "success"]
    assert not failed, f"{dag_id}: {what}: runs {failed} failed; see {log}"


def test_platform_page_shows_pools_ledger_lookup_and_leaderboard(airflow_ui):
    """The plugin's page, logged in as a person is: the pool versions with their counts, a URL looked up in
    the ledger (its crawl, WAT file and statuses), and the leaderboard rows of the runs the forms made."""
    import urllib.error

    from datacomp_ops.core import ledger, storage, versions
    from datacomp_ops.core.layout import PoolLayout

    url, root = airflow_ui["url"], str(airflow_ui["root"])
    version = versions.latest(root)
    assert version and (airflow_ui["root"] / "leaderboard" / "index.html").exists(), \
        "the form test's build, filtering, training and evaluation runs come first"
    with pytest.raises(urllib.error.HTTPError) as refused:  # no login, no page
        urllib.request.urlopen(f"{url}/datacomp/", timeout=30)
    assert refused.value.code in (401, 403)
    dirs, names = versions.ledger_dirs(root, version)
    current = ledger.latest(ledger.history(dirs, names)).to_pylist()
    kept = next(r for r in current if r["status"] == "kept")
    dropped = next(r for r in current if r["status"] not in ("kept", "downloaded", "deferred"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with _browser(url, airflow_ui["token"]) as browser:
        browser.goto(f"{url}/datacomp/")
        browser.wait_for("!!document.querySelector('#leaderboard table')", 30, "the leaderboard table")
        text = browser.js("document.body.innerText")
        assert "Pool versions" in text and version in text and "kept" in text
        board = browser.js("[...document.querySelectorAll('#leaderboard tbody tr')].map(r => r.innerText)")
        assert any("no_filter" in row and "tiny" in row for row in board), board
        assert browser.js("document.querySelectorAll('#leaderboard svg').length") == 2
        # the published pool's versions, each with its decay as its report says (the refreshes added versions)
        proot = airflow_ui["root"] / "datasets" / "published_example"
        assert "Published pool published_example" in text
        published = versions.latest(str(proot))
        decay = storage.read_json(PoolLayout(str(proot), published).decay_report)
        assert len(decay["over_time"]) >= 2, decay["over_time"]
        cells = browser.js("[...document.querySelectorAll('h3')].filter(h => h.innerText === 'Published pool "
                           "published_example').map(h => [...h.nextElementSibling.querySelectorAll('tr')]"
                           ".map(r => r.innerText))[0]")
        row = next(r for r in cells if r.startswith(published))
        now = decay["now"]
        assert f"held {now['held']:,} of {now['given']:,}" in row and f"pending {now['pending']:,}" in row, row
        browser.screenshot(str(ARTIFACTS / "platform-page.png"))
        for row, verdict in ((kept, "in the pool"), (dropped, f"left the pool: {dropped['status']}")):
            browser.type_into("document.querySelector('#lookup input[name=q]')", row["url"])
            browser.click("document.querySelector('#lookup button')")
            browser.wait_for(f"(document.querySelector('#lookup-result') || {{innerText: ''}}).innerText"
                             f".includes({json.dumps(row['uid'])})", 30, "the lookup's answer")
            answer = browser.js("document.querySelector('#lookup-result').innerText")
            assert row["uid"] in answer and verdict in answer and "WAT file" in answer, answer
            assert "CC-SYNTH" in answer  # the crawl it was extracted from
        browser.screenshot(str(ARTIFACTS / "platform-page-lookup.png"))
        # inside the Airflow UI: the navigation's page frames it
        browser.goto(f"{url}/plugin/datacomp")
        browser.wait_for("!!document.querySelector('iframe')", 60, "the plugin page's frame")
        time.sleep(3)
        browser.screenshot(str(ARTIFACTS / "platform-page-in-airflow.png"))
        assert "datacomp" in browser.js("document.querySelector('iframe').src")


def test_backfill_of_two_weeks_for_one_scale(airflow_ui, tmp_path, image_server):
    """`airflow backfill create` over two logical dates builds those weeks' crawls, only as far as the scale needs."""
    import pyarrow.parquet as pq

    from datacomp_ops.core.schema import read_subset, scale_key, uids_to_array

    api = Api(airflow_ui["url"], airflow_ui["token"])
    source, root = tmp_path / "source", tmp_path / "root"
    crawls = generate_world(source, CrawlSpec(n_urls=150, base_url=image_server.base_url, urls_per_file=150,
                                              crawl_id="CC-SYNTH-2026-46", seed=5), 2, repeat_fraction=0.2)
    generate_eval_suite(source / "eval")
    conf = {"scale": "tiny", "config_overrides": {
        "storage_root": str(root), "crawl.source": str(source), "evaluation.sets_dir": str(source / "eval"),
        "publish.tiny_pool_size": 20}}
    env = airflow_env(Path(airflow_ui["log"]).parent / "airflow", AIRFLOW__API__PORT=airflow_ui["url"].rsplit(":", 1)[1])
    # Sundays 2026-11-08 and 2026-11-15: ISO weeks 45 and 46 (the form test's runs hold later dates).
    # The DAG is paused until the backfill's runs all exist: on SQLite each run is committed as it is made
    # (pysqlite commits when a SAVEPOINT it began is released), and when a later one is refused with
    # "database is locked" Airflow deletes them all again, under a scheduler that may have started the
    # first; the scheduler then dies on the deleted run (CI saw it), and standalone does not restart it.
    api("/dags/commonpool_build", "PATCH", {"is_paused": True})
    for _ in range(3):  # SQLite, busy with the scheduler's writes, may refuse the CLI's; Airflow undoes them
        made = subprocess.run(["airflow", "backfill", "create", "--dag-id", "commonpool_build", "--from-date",
                               "2026-11-02", "--to-date", "2026-11-15", "--max-active-runs", "1", "--dag-run-conf",
                               json.dumps(conf)], env=env, capture_output=True, text=True)
        if made.returncode == 0 or "database is locked" not in made.stderr:
            break
        time.sleep(5)
    assert made.returncode == 0, f"airflow backfill create failed:\n{made.stdout[-3000:]}\n{made.stderr[-3000:]}"
    api("/dags/commonpool_build", "PATCH", {"is_paused": False})
    runs = _wait_until_ended(api, "commonpool_build", airflow_ui["log"], "the backfill", 1200, backfill=True)
    assert len(runs) == 2, runs
    assert sorted(r["state"] for r in runs) == ["success", "success"], airflow_ui["log"]

    manifests = [json.loads((root / "pool" / v / "manifest.json").read_text()) for v in ("v0001", "v0002")]
    assert [m["crawls"] for m in manifests] == [["CC-SYNTH-2026-45"], ["CC-SYNTH-2026-45", "CC-SYNTH-2026-46"]]
    # only what tiny needs was downloaded; the rest is deferred, and the larger scales are not built
    for m in manifests:
        assert m["ledger"]["statuses"].get("deferred", 0) > 0
        assert m["scales"]["tiny"]["built"] and not m["scales"]["small"]["built"]
    # tiny is exactly what a full build would pick: the 20 smallest scale keys among all keepable samples
    keepable = {r["uid"] for c in crawls for r in pq.read_table(c["truth"]).to_pylist()
                if r["expected_final"] == "kept"}
    want = sorted(keepable, key=scale_key)[:20]
    got = read_subset(manifests[1]["scales"]["tiny"]["path"])
    assert got.tolist() == sorted(uids_to_array(want).tolist())


def _listening(pgid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket that a process of group `pgid` listens on."""
    inodes = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) != pgid:
                    continue
                inodes |= {os.readlink(fd)[8:-1] for fd in (entry / "fd").iterdir()
                           if os.readlink(fd).startswith("socket:[")}
            except OSError:
                pass
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                addr, port = fields[1].split(":")
                raw = bytes.fromhex(addr)
                if width == 8:
                    host = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:
                    host = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
                found.add((host, int(port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp")
def test_the_embedded_airflow_listens_on_loopback_only(airflow_ui):
    """The API server (UI and REST API) on 127.0.0.1, no log server on 8793/8794 or anywhere else."""
    listening = _listening(airflow_ui["pgid"])
    assert ("127.0.0.1", airflow_ui["port"]) in listening
    assert {host for host, _ in listening} <= {"127.0.0.1", "::1"}, listening
