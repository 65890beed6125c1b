"""Polite downloads: each host's robots.txt and TDMRep read before any of its images is requested, requests
paced per host across a partition's processes, Retry-After and timeouts listened to; checked from what the
synthetic web's hosts saw (the server's log)."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter, defaultdict
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp_ops.core import ledger, storage
from datacomp_ops.core.address_guard import PinnedNames
from datacomp_ops.download import host_rules, polite_fetch
from datacomp_ops.download.host_rules import FOUND, NONE, UNREACHABLE, Fetched, HostRules
from datacomp_ops.synthetic import hosts

AGENT = "datacomp-platform"


def _rules(robots: str | None = None, tdmrep: str | None = None, robots_outcome: str | None = None) -> HostRules:
    return HostRules("http://h.test", time.time(),
                     Fetched(robots_outcome or (FOUND if robots is not None else NONE), robots or ""),
                     Fetched(FOUND if tdmrep is not None else NONE, tdmrep or ""))


def test_robots_txt_is_read_as_rfc_9309_says_for_the_platforms_agent():
    rules = _rules("User-agent: *\nDisallow: /private/\nAllow: /private/ok/\nDisallow: /*.gif$\n\n"
                   f"User-agent: {AGENT}\nDisallow: /no-ai/\nDisallow: /private/\nAllow: /private/ok/\n")
    decide = lambda path: host_rules.decide(rules, f"http://h.test{path}", AGENT)[0]  # noqa: E731
    # the group of the platform's agent applies, not '*': /*.gif$ is not in it
    assert [decide(p) for p in ("/a.jpg", "/no-ai/a.jpg", "/private/a.jpg", "/private/ok/a.jpg", "/x.gif")] == \
        [None, "disallowed_robots", "disallowed_robots", None, None]
    assert host_rules.decide(rules, "http://h.test/no-ai/a.jpg", "otherbot")[0] is None
    assert host_rules.decide(rules, "http://h.test/x.gif", "otherbot")[0] == "disallowed_robots"  # '*': the longest match
    # 4xx: no rules; 5xx or a timeout: the host is tried later, none of its URLs requested now
    assert host_rules.decide(_rules(robots_outcome=NONE), "http://h.test/no-ai/a", AGENT)[0] is None
    answered = _rules(robots_outcome=UNREACHABLE)
    answered.robots = Fetched(UNREACHABLE, status=503, why="HTTP 503")
    why = host_rules.decide(answered, "http://h.test/a", AGENT)
    assert why[0] == "robots_unavailable" and "asked again by a later run" in why[1]
    answered.robots = Fetched(UNREACHABLE, why="TimeoutError: timed out")  # the host did not answer at all
    assert host_rules.decide(answered, "http://h.test/a", AGENT)[0] == "timeout"
    answered.robots = Fetched(UNREACHABLE, why="ConnectionRefusedError: [Errno 111] Connection refused")
    assert host_rules.decide(answered, "http://h.test/a", AGENT)[0] == "network_error"
    assert host_rules.crawl_delay(_rules("User-agent: *\nCrawl-delay: 2\n"), AGENT) == 2.0


def test_tdmrep_reserves_what_its_first_matching_rule_says():
    rules = _rules(tdmrep=json.dumps([{"location": "/free/*", "tdm-reservation": 0},
                                      {"location": "/*.jpg$", "tdm-reservation": 1, "tdm-policy": "https://p"},
                                      {"location": "/", "tdm-reservation": 0}]))
    decide = lambda path: host_rules.decide(rules, f"http://h.test{path}", AGENT)  # noqa: E731
    assert decide("/free/a.jpg")[0] is None and decide("/b.png")[0] is None
    status, why = decide("/img/b.jpg")
    assert status == "tdm_reserved" and "policy https://p" in why
    # a declaration that is not TDMRep's JSON reserves nothing (and a fetch never takes an HTML page for one)
    assert host_rules.decide(_rules(tdmrep="{not json"), "http://h.test/a.jpg", AGENT)[0] is None


def test_origins_retry_after_and_pinned_names():
    assert host_rules.origin_of("HTTP://Img.Example.COM:80/a.jpg") == "http://img.example.com"
    assert host_rules.origin_of("https://img.example.com:8443/a") == "https://img.example.com:8443"
    assert host_rules.origin_of("ftp://x/a") is None and host_rules.origin_of("not a url") is None
    assert polite_fetch.retry_after("120") == 120.0
    assert 59 <= polite_fetch.retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 61
    assert polite_fetch.retry_after("soon") is None and polite_fetch.retry_after(None) is None
    pinned = PinnedNames(["*.synthetic.test=127.0.0.1", "img.example.org=10.0.0.7"])
    assert pinned.address("S001.synthetic.test") == "127.0.0.1" and pinned.address("img.example.org") == "10.0.0.7"
    assert pinned.address("synthetic.test.evil.com") is None and pinned.address("example.org") is None
    for bad in ("*=127.0.0.1", "a.b=not-an-ip", "a.*.b=127.0.0.1", "no-address"):
        with pytest.raises(ValueError):
            PinnedNames([bad])


def _hammer(gates, host, n, out):
    import threading

    def one():
        for _ in range(n):
            assert gates.acquire(host) is None
            out.put(time.monotonic())
            time.sleep(0.005)  # a request
            gates.release(host, "answer")

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_a_hosts_pace_and_connections_hold_across_forked_processes_and_their_threads():
    gates = polite_fetch.HostGates({"a.test": 0.05, "b.test": 0.0}, connections=2, retry_after_max_s=10,
                                   backoff_max_s=4)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(gates, "a.test", 5, out)) for _ in range(2)]  # 2 x 4 threads x 5
    for p in procs:
        p.start()
    times = sorted(out.get(timeout=30) for _ in range(40))
    for p in procs:
        p.join()
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.05 * host_rules.PACE_MARGIN - 0.002, min(gaps)
    # a pause: the host's URLs are refused at once, other hosts go on; a timeout streak backs off that host alone
    assert gates.acquire("b.test") is None
    gates.release("b.test", "pause", 30.0)
    assert gates.acquire("b.test").startswith("host_paused: b.test asked to wait 30 s (Retry-After; paused 10 s)")
    assert gates.paused_until[gates.index["b.test"]] - time.monotonic() <= 10  # capped: retry_after_max_s
    for _ in range(3):
        assert gates.acquire("a.test") is None
        gates.release("a.test", "timeout")
    start = time.monotonic()
    assert gates.acquire("a.test") is None  # waited 2 s: the third timeout in a row
    assert time.monotonic() - start >= 1.9
    gates.release("a.test", "answer")


def test_a_partition_is_spread_so_that_a_large_hosts_urls_come_back_at_its_share():
    order = host_rules._spread(["big"] * 6 + ["small"] * 2)
    picked = ["big" if i < 6 else "small" for i in order]
    assert picked.count("small") == 2 and picked.index("small") <= 2 and picked[::-1].index("small") <= 2


def _windows(times: list[float], width: float = 1.0) -> int:
    """The most arrivals in any window of `width` seconds."""
    times, most, j = sorted(times), 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        most = max(most, i - j + 1)
    return most


@pytest.fixture
def quiet_server():
    """A server of its own that keeps every image it made: made before the timed download, they leave its
    threads idle, so that the arrival times it logs are not late by the time spent rendering others."""
    from conftest import HANG_SECONDS
    from datacomp_ops.synthetic.server import serving

    with serving(hang_seconds=HANG_SECONDS, slow_seconds=0.2, cache_images=True) as server:
        yield server


def _warm(server, paths) -> None:
    from datacomp_ops.synthetic.server import NotFound

    for path in paths:
        head, _, rest = path.lstrip("/").partition("/")
        inner = {"img": path, "cdn": "/" + rest.partition("/")[2]}.get(head, "/" + rest)
        try:
            server.render(inner)
        except (NotFound, ValueError, IndexError):
            pass


@pytest.mark.slow
def test_a_crawl_over_many_hosts_keeps_to_every_hosts_rules_pace_and_pauses(tmp_path, quiet_server):
    """A crawl over 40 hosts of the synthetic web (hosts.py: robots.txt rules, a TDMRep reservation, the TDM
    header, a rate-limited host answering 429 Retry-After, a robots.txt that times out, a Crawl-delay):
    from the server's log, no URL that robots.txt disallows or tdmrep.json reserves was requested, no host saw
    more than its pace in any second, a host that said Retry-After saw nothing until then, and after the
    later runs that retry what was postponed every URL's status is the crawl's truth."""
    from datacomp_ops.core import versions
    from datacomp_ops.core.config import load_config
    from datacomp_ops.core.layout import PoolLayout
    from datacomp_ops.download.partition import Partition, format_rules, run_download
    from datacomp_ops.download.plan import current_statuses, write_requeue
    from datacomp_ops.synthetic.crawl import CrawlSpec, generate_crawl

    image_server = quiet_server
    summary = generate_crawl(tmp_path / "crawl", CrawlSpec(n_urls=700, seed=3, base_url=image_server.base_url,
                                                           urls_per_file=700, hosts=40, faults=False))
    truth = pq.read_table(summary["truth"])
    _warm(image_server, [urlsplit(u).path for u in truth["url"].to_pylist()])
    rps = 12  # above the rate-limited hosts' 8 a second: they answer 429 with Retry-After
    config = load_config(overrides={
        "storage_root": str(tmp_path / "root"), "download.host_addresses": [hosts.PINNED],
        # one connection a host: a redirect to its own host must take the host's next turn, not a second one
        "download.per_host_rps": rps, "download.per_host_connections": 1, "download.timeout": 3,
        "download.retries": 0, "download.processes_count": 2, "download.thread_count": 16,
        "download.number_sample_per_shard": 1000})
    urls = truth.select(["uid", "url", "text"]).append_column("page_url", pa.nulls(truth.num_rows, pa.string())) \
        .append_column("wat_path", pa.array(["synthetic"] * truth.num_rows))
    part = str(tmp_path / "urls" / "part-0000-00000.parquet")
    storage.makedirs(str(tmp_path / "urls"))
    pq.write_table(urls, part)
    root = str(tmp_path / "root")
    pool = PoolLayout(root, versions.open_version(root, "run0"))
    seen = len(image_server.host_log)
    stats = run_download(Partition(part, truth.num_rows, 0), pool, config)
    log = image_server.host_log[seen:]

    by_url = {r["url"]: r for r in truth.to_pylist()}
    requested = [(t, h, p, s) for t, h, p, s in log if h.endswith(hosts.DOMAIN)]
    images = [(t, h, p, s) for t, h, p, s in requested if p not in ("/robots.txt", "/.well-known/tdmrep.json")]
    # 1. nothing robots.txt disallows, tdmrep.json reserves, or whose host's robots.txt timed out was requested
    never = {"disallowed_robots", "robots_unavailable", "timeout"}  # (timeout: host 6's robots.txt hangs)
    for t, h, p, s in images:  # (a redirect's target too, before it is requested: the same host, its own path)
        said = hosts.rules_say(hosts.policy(h), p)
        assert said not in never and not (said == "tdm_reserved" and hosts.policy(h).tdmrep), (h, p, said)
    # each host's rules were asked once
    rules_asked = Counter((h, p) for _, h, p, _ in requested if p in ("/robots.txt", "/.well-known/tdmrep.json"))
    assert set(rules_asked.values()) == {1} and len(rules_asked) == 2 * len({urlsplit(u).netloc for u in by_url})
    assert stats["rules_requests"] == len(rules_asked) and stats["hosts"] == 40
    assert format_rules(stats.counters) == (f"hosts' robots.txt/TDMRep: 40 looked up (a host per partition), 40 "
                                            f"fetched now ({len(rules_asked)} requests), 0 from the cache")
    # 2. no host saw more than its pace in any second (Crawl-delay: 1 on policy-8 hosts)
    arrivals = defaultdict(list)
    for t, h, p, s in requested:
        arrivals[h].append(t)
    for h, times in arrivals.items():
        limit = 1 if hosts.policy(h).robots and "Crawl-delay" in hosts.policy(h).robots else rps
        assert _windows(times) <= limit, (h, _windows(times), limit)
    # 3. a host that answered 429 Retry-After: 2 saw nothing for 2 s (with one connection a host, no other
    # request of it was on the way), and its other URLs were postponed, not failed
    paused = [(t, h) for t, h, p, s in images if s == 429]
    assert paused, "the rate-limited hosts were asked faster than they serve"
    for t, h in paused:
        after = [u for u, g, _, _ in requested if g == h and t < u < t + hosts.RETRY_AFTER_S]
        assert not after, (h, [u - t for u in after])
    current = ledger.latest(ledger.history(*versions.ledger_dirs(root, pool.version))).to_pylist()
    got = {r["url"]: r for r in current}
    assert stats["host_paused"] > 0 and all(got[u]["attempt"] == 0 for u in got if got[u]["status"] == "host_paused")
    # 4. every other URL as its truth says; the postponed ones downloaded by the later runs
    for url, row in by_url.items():
        if got[url]["status"] != "host_paused":
            assert got[url]["status"] == row["expected_status"], (url, got[url]["status"], row["expected_status"])
    storage.write_json(pool.manifest, {"published_at": "run0"})
    runs = 0
    while any(r["status"] == "host_paused" for r in got.values()):  # later runs: what was postponed, again
        runs += 1
        assert runs <= 6, Counter(r["status"] for r in got.values())
        time.sleep(hosts.RETRY_AFTER_S)
        version = PoolLayout(root, versions.open_version(root, f"run{runs}"))
        for again in write_requeue(version, config, 1.0, *current_statuses(version), set()):
            run_download(Partition(again, pq.read_metadata(again).num_rows, 1000 * runs), version, config)
        storage.write_json(version.manifest, {"published_at": f"run{runs}"})
        got = {r["url"]: r for r in ledger.latest(ledger.history(*versions.ledger_dirs(root, version.version)))
               .to_pylist()}
    assert {u: r["status"] for u, r in got.items()} == {u: r["expected_status"] for u, r in by_url.items()}


def test_a_remote_roots_answers_are_read_once_per_machine_and_refetched_when_old(tmp_path, monkeypatch):
    """memory:// stands for s3://: a machine reads a host's answers from the storage root once, then from its
    copy; answers older than download.rules_max_age_hours are fetched again (here: an unreachable host)."""
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    cache = "memory://root/hosts/rules"
    fresh = HostRules("http://h.test", time.time(), Fetched(FOUND, "User-agent: *\nDisallow: /x/\n"), Fetched(NONE))
    storage.write_json(host_rules.cache_path(cache, fresh.origin), fresh.to_json())
    run = host_rules.rules_for(["http://h.test"], cache, "ua", 1.0, 3600)
    assert (run.cached, run.fetched) == (1, 0) and run.rules["http://h.test"].robots.body == fresh.robots.body
    local = host_rules.cache_path(host_rules.machine_copy(cache), fresh.origin)
    assert local.startswith(str(tmp_path)) and storage.exists(local)
    storage.remove(host_rules.cache_path(cache, fresh.origin))  # gone from the root: the machine's copy answers
    assert host_rules.rules_for(["http://h.test"], cache, "ua", 1.0, 3600).cached == 1
    old = HostRules("http://old.invalid", time.time() - 7200, Fetched(FOUND, ""), Fetched(NONE))
    storage.write_json(host_rules.cache_path(cache, old.origin), old.to_json())
    again = host_rules.rules_for(["http://old.invalid"], cache, "ua", 1.0, 3600)  # older than its hour
    assert again.fetched == 1 and again.requests == 2 and again.rules["http://old.invalid"].robots.outcome == UNREACHABLE
    # a host that could not be asked is not cached: the next partition asks it again
    assert storage.read_json(host_rules.cache_path(cache, old.origin))["fetched_at"] == old.fetched_at
    assert host_rules.rules_for(["http://old.invalid"], cache, "ua", 1.0, 3600).fetched == 1


class _RulesHost:
    """A host on a port of its own that answers its rules slowly and counts what it was asked."""

    def __init__(self, robots_status: int = 200):
        import http.server
        import threading

        self.asked: Counter = Counter()
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                host.asked[self.path] += 1
                time.sleep(0.3)  # long enough for every partition to meet the host before it answers
                status = robots_status if self.path == "/robots.txt" else 404
                body = b"User-agent: *\nDisallow: /private/\n" if status == 200 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize("root", ["file", "memory"])
def test_partitions_meeting_the_same_hosts_at_once_ask_each_host_once(tmp_path, monkeypatch, root):
    """Four partitions screening the same hosts at the same moment: each host's robots.txt and tdmrep.json
    are asked once, the answers (a host that could not be asked included) shared; on an object store
    (memory:// standing for s3://) by write, settle, read back."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path / "machine"))
    monkeypatch.setenv("DATACOMP_LEASE_SETTLE_S", "0.2")
    base = str(tmp_path) if root == "file" else f"memory://claims-{time.time_ns()}"
    cache, claims = f"{base}/hosts/rules", f"{base}/hosts/claims"
    up = [_RulesHost() for _ in range(5)]
    down = _RulesHost(robots_status=503)
    try:
        origins = [h.origin for h in up + [down]]
        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda _: host_rules.rules_for(origins, cache, "ua", 5.0, 3600, claims_dir=claims),
                                 range(4)))
        for host in up + [down]:
            assert host.asked == {"/robots.txt": 1, "/.well-known/tdmrep.json": 1}, host.origin
        assert sum(r.fetched for r in runs) == len(origins) and sum(r.shared for r in runs) == 3 * len(origins)
        assert sum(r.requests for r in runs) == 2 * len(origins)
        for run in runs:
            assert host_rules.decide(run.rules[up[0].origin], up[0].origin + "/private/a.jpg", "ua")[0] == \
                host_rules.DISALLOWED
            assert host_rules.decide(run.rules[down.origin], down.origin + "/a.jpg", "ua")[0] == host_rules.UNAVAILABLE
        # the answers are cached and their claims gone; the host that could not be asked is not cached, its
        # answer is in its claim for the partitions that waited on it only: one starting later (a task's
        # retry, the next run) asks it again
        assert not storage.exists(host_rules.cache_path(claims, up[0].origin))
        assert not storage.exists(host_rules.cache_path(cache, down.origin))
        later = host_rules.rules_for(origins, cache, "ua", 5.0, 3600, claims_dir=claims)
        assert (later.fetched, later.cached) == (1, len(up)) and down.asked["/robots.txt"] == 2
    finally:
        for host in up + [down]:
            host.server.shutdown()


def test_a_claim_whose_claimer_died_is_waited_out_then_asked_here(tmp_path, monkeypatch):
    """A claim held by a partition that died: the host is asked once its claim's time is up, not before, and
    never left unasked; at once where the claimer was a process of this machine that is gone."""
    monkeypatch.setattr(host_rules, "claim_life", lambda timeout: 1.0)
    host = _RulesHost()
    cache, claims = str(tmp_path / "rules"), str(tmp_path / "claims")
    try:
        storage.write_json(host_rules.cache_path(claims, host.origin), {"token": "dead", "until": time.time() + 1.0})
        started = time.monotonic()
        run = host_rules.rules_for([host.origin], cache, "ua", 5.0, 3600, claims_dir=claims)
        assert time.monotonic() - started >= 1.0 and run.fetched == 1 and host.asked["/robots.txt"] == 1
        # a claim of a process of this machine that is gone (a download killed, run again at once) is free now,
        # not after its minute (the host's two answers take 0.6 s; the bound leaves room for a busy machine)
        import socket
        import subprocess

        gone = subprocess.Popen(["true"])
        gone.wait()
        killed = _RulesHost()
        try:
            storage.write_json(host_rules.cache_path(claims, killed.origin),
                               {"token": "killed", "until": time.time() + 60, "host": socket.gethostname(),
                                "pid": gone.pid})
            started = time.monotonic()
            assert host_rules.rules_for([killed.origin], cache, "ua", 5.0, 3600, claims_dir=claims).fetched == 1
            assert time.monotonic() - started < 5.0 and killed.asked["/robots.txt"] == 1
        finally:
            killed.server.shutdown()
        # a claim created and never written (its claimer died between the two) is free soon after its creation
        other = _RulesHost()
        try:
            empty = host_rules.cache_path(claims, other.origin)
            storage.write_bytes(empty, b"")
            os.utime(empty, (time.time() - 60, time.time() - 60))
            started = time.monotonic()
            assert host_rules.rules_for([other.origin], cache, "ua", 5.0, 3600, claims_dir=claims).fetched == 1
            assert time.monotonic() - started < 5.0 and other.asked["/robots.txt"] == 1
        finally:
            other.server.shutdown()
    finally:
        host.server.shutdown()


@pytest.mark.slow
def test_two_partitions_downloading_at_once_ask_each_host_for_its_rules_once(tmp_path, quiet_server):
    """Two partitions of a crawl over 40 hosts downloaded side by side, as a run's mapped tasks are: from the
    server's log, every host's robots.txt and tdmrep.json were asked once in all (the one whose robots.txt
    hangs too), and the partitions' counters say which asked and which took the other's answers."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import HANG_SECONDS
    from datacomp_ops.core import versions
    from datacomp_ops.core.config import load_config
    from datacomp_ops.core.layout import PoolLayout
    from datacomp_ops.download.partition import Partition, run_download
    from datacomp_ops.synthetic.crawl import CrawlSpec, generate_crawl

    summary = generate_crawl(tmp_path / "crawl", CrawlSpec(n_urls=240, seed=5, base_url=quiet_server.base_url,
                                                           urls_per_file=240, hosts=40, faults=False))
    truth = pq.read_table(summary["truth"])
    _warm(quiet_server, [urlsplit(u).path for u in truth["url"].to_pylist()])
    root = str(tmp_path / "root")
    config = load_config(overrides={
        "storage_root": root, "download.host_addresses": [hosts.PINNED], "download.timeout": 2,
        "download.retries": 0, "download.processes_count": 1, "download.thread_count": 8,
        "download.number_sample_per_shard": 1000})
    urls = truth.select(["uid", "url", "text"]).append_column("page_url", pa.nulls(truth.num_rows, pa.string())) \
        .append_column("wat_path", pa.array(["synthetic"] * truth.num_rows))
    storage.makedirs(str(tmp_path / "urls"))
    parts, halves = [], [urls.take(list(range(k, urls.num_rows, 2))) for k in range(2)]  # as extraction shuffles
    for k in range(2):
        parts.append(str(tmp_path / "urls" / f"part-0000-{k:05d}.parquet"))
        pq.write_table(halves[k], parts[-1])
    pool = PoolLayout(root, versions.open_version(root, "run0"))
    seen = len(quiet_server.host_log)
    with ThreadPoolExecutor(2) as run:
        stats = list(run.map(lambda k: run_download(Partition(parts[k], 120, 1000 * k), pool, config), range(2)))
    both = [{urlsplit(u).netloc for u in halves[k]["url"].to_pylist()} for k in range(2)]
    assert len(both[0] & both[1]) >= 30  # most hosts are in both partitions

    def asked() -> Counter:
        return Counter((h, p) for _, h, p, _ in quiet_server.host_log[seen:]
                       if h.endswith(hosts.DOMAIN) and p in ("/robots.txt", "/.well-known/tdmrep.json"))

    deadline = time.time() + HANG_SECONDS + 2  # the hanging robots.txt is logged when its hang ends
    while len(asked()) < 2 * 40 and time.time() < deadline:
        time.sleep(0.2)
    assert len(asked()) == 2 * 40 and set(asked().values()) == {1}, asked()
    assert sum(s["rules_fetched"] for s in stats) == 40 and sum(s["rules_requests"] for s in stats) == 80
    assert sum(s["hosts"] for s in stats) == len(both[0]) + len(both[1])
    # claims are gone once answered, but for the hosts that could not be asked: their answer is in the claim
    left = [storage.read_json(p) for p in storage.ls(str(tmp_path / "root" / "hosts" / "claims"), "*/*.json")]
    assert left and all("answer" in c and c["answer"]["robots"]["outcome"] == UNREACHABLE for c in left)
