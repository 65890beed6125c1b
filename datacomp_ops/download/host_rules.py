"""What each host says about being downloaded from, read before any of its images is requested.

Per origin (scheme, host, port): its robots.txt for the platform's user agent (RFC 9309, parsed by
Protego, Scrapy's parser: wildcards, ``$``, the longest match wins, Crawl-delay) and its TDMRep
declaration (W3C TDM Reservation Protocol: ``/.well-known/tdmrep.json``, an array of rules
``{"location": path pattern, "tdm-reservation": 0|1, "tdm-policy": URL}``, the first rule whose
location matches a path applies; the ``tdm-reservation`` response header is checked at download,
polite_fetch.py).

How a fetch is read (RFC 9309 section 2.3.1): a 2xx body is the rules; a 4xx other than 429 means
there are none (everything allowed); a 5xx, a 429, a timeout or a network error means the host
cannot be judged now: its URLs are not requested, and fail transiently (``robots_unavailable`` when
the host answered, else ``timeout`` or ``network_error`` as the image's own request would have), so
later runs ask again up to ``download.max_attempts``.
A 3xx is followed by urllib (up to 10 hops, each through the address guard). The body is read up to
500 KiB (the RFC's minimum a crawler must parse).

What a URL's host says decides it before the download: ``disallowed_robots`` and ``tdm_reserved``
(permanent: never requested), a transient failure (above), or nothing (it is downloaded, paced
by polite_fetch.py at the host's rate, its Crawl-delay where that is slower).

The answers are cached on the storage root, one small JSON per origin under ``hosts/rules/``, with
their fetch time: a run fetches a host's files once, later partitions and runs read the cache until
it is older than ``download.rules_max_age_hours`` (a host that could not be asked is not cached).
Partitions running side by side claim the hosts they miss before asking (host_claims.py), so that a
host they share is asked by one of them and the others wait for its answer. A machine
keeps a copy of a remote root's cache on its own disk (`machine_copy`), so that a host met by several
of its partitions is read from the storage root once.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Iterable
from urllib.parse import urlsplit

import pyarrow as pa

log = logging.getLogger(__name__)

DISALLOWED = "disallowed_robots"
RESERVED = "tdm_reserved"
UNAVAILABLE = "robots_unavailable"

ROBOTS_PATH = "/robots.txt"
TDMREP_PATH = "/.well-known/tdmrep.json"
MAX_BYTES = 500 * 1024

# requests to a host leave this much further apart than its pace asks (polite_fetch.py): the way to the
# host adds jitter and a host counts arrivals, so requests paced exactly at the limit could arrive one too
# many in some second
PACE_MARGIN = 1.1

# a fetch's outcome: the body to read, no rules at all, or no answer now
FOUND, NONE, UNREACHABLE = "found", "none", "unreachable"


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, lower-cased, the default port left out; None for what no
    request is made for (url_fetch refuses those unfetched)."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return None
    default = 80 if scheme == "http" else 443
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


def host_of(origin: str) -> str:
    return urlsplit(origin).netloc


@dataclass
class Fetched:
    """One well-known file of an origin as fetched: FOUND with its body, NONE, or UNREACHABLE with why."""

    outcome: str
    body: str = ""
    status: int | None = None
    why: str = ""


@dataclass
class HostRules:
    origin: str
    fetched_at: float
    robots: Fetched
    tdmrep: Fetched
    _parsed: object = field(default=None, repr=False, compare=False)

    @property
    def unreachable(self) -> bool:
        return UNREACHABLE in (self.robots.outcome, self.tdmrep.outcome)

    def fresh(self, now: float, max_age_s: float) -> bool:
        return not self.unreachable and now - self.fetched_at < max_age_s

    def to_json(self) -> dict:
        return {"origin": self.origin, "fetched_at": self.fetched_at,
                "fetched": datetime.datetime.fromtimestamp(self.fetched_at, datetime.timezone.utc)
                .isoformat(timespec="seconds"),
                "robots": asdict(self.robots), "tdmrep": asdict(self.tdmrep)}

    @classmethod
    def from_json(cls, data: dict) -> "HostRules":
        return cls(data["origin"], float(data["fetched_at"]), Fetched(**data["robots"]), Fetched(**data["tdmrep"]))


def _robots_parser(rules: HostRules):
    """The origin's robots.txt parsed, once."""
    from protego import Protego

    if rules._parsed is None:
        rules._parsed = Protego.parse(rules.robots.body if rules.robots.outcome == FOUND else "")
    return rules._parsed


# -- TDMRep ------------------------------------------------------------------------------------------------


def _pattern(location: str) -> re.Pattern:
    """A TDMRep location as robots.txt path patterns read: ``*`` any run of characters, a final ``$`` the end."""
    anchored = location.endswith("$")
    body = re.escape(location[:-1] if anchored else location).replace(r"\*", ".*")
    return re.compile(body + ("$" if anchored else ""))


def tdm_rules(rules: HostRules) -> list[tuple[re.Pattern, int, str]]:
    """(location pattern, reservation, policy) of the origin's tdmrep.json; [] when it has none or it is not
    TDMRep's JSON (a declaration that cannot be read reserves nothing: logged)."""
    if rules.tdmrep.outcome != FOUND:
        return []
    try:
        data = json.loads(rules.tdmrep.body)
        out = []
        for rule in data if isinstance(data, list) else []:
            location = rule.get("location")
            if isinstance(location, str) and location.startswith("/"):
                out.append((_pattern(location), int(rule.get("tdm-reservation", 0)), str(rule.get("tdm-policy", ""))))
        return out
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("%s%s is not TDMRep's JSON (%s): read as no reservation", rules.origin, TDMREP_PATH, exc)
        return []


# -- deciding a URL ------------------------------------------------------------------------------------------


def _path(url: str) -> str:
    parts = urlsplit(url.strip())
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _unreachable(origin: str, path: str, fetched: Fetched) -> tuple[str, str]:
    """The status of a URL whose host could not be asked: ``robots_unavailable`` when the host answered (5xx,
    429), else the network's own failure (``timeout``, ``network_error``), as the image's request would have
    met; all transient, tried again by later runs up to download.max_attempts."""
    if fetched.status is not None:
        status = UNAVAILABLE
    else:
        status = "timeout" if "timed out" in fetched.why.lower() or "timeout" in fetched.why.lower() else "network_error"
    return status, f"{origin}{path} could not be fetched ({fetched.why}): not requested, the host is asked again " \
                   f"by a later run"


def decide(rules: HostRules, url: str, agent: str, tdm: list | None = None) -> tuple[str | None, str]:
    """(status, why) of `url` by its origin's rules: DISALLOWED, RESERVED, a transient status when the rules
    could not be fetched (`_unreachable`), or (None, "")."""
    if rules.robots.outcome == UNREACHABLE:
        return _unreachable(rules.origin, ROBOTS_PATH, rules.robots)
    if rules.tdmrep.outcome == UNREACHABLE:
        return _unreachable(rules.origin, TDMREP_PATH, rules.tdmrep)
    if rules.robots.outcome == FOUND and not _robots_parser(rules).can_fetch(url, agent):
        return DISALLOWED, f"{rules.origin}{ROBOTS_PATH} disallows it for {agent}"
    path = _path(url)
    for pattern, reservation, policy in tdm if tdm is not None else tdm_rules(rules):
        if pattern.match(path):
            if reservation == 1:
                return RESERVED, f"{rules.origin}{TDMREP_PATH} reserves TDM rights for {pattern.pattern}" + \
                                 (f" (policy {policy})" if policy else "")
            break
    return None, ""


def crawl_delay(rules: HostRules, agent: str) -> float | None:
    """Seconds between requests the host's robots.txt asks of `agent` (Crawl-delay, or Request-rate)."""
    if rules.robots.outcome != FOUND:
        return None
    parser = _robots_parser(rules)
    delay = parser.crawl_delay(agent)
    rate = parser.request_rate(agent)
    if rate is not None and rate.requests:
        delay = max(delay or 0.0, rate.seconds / rate.requests)
    return float(delay) if delay else None


# -- fetching --------------------------------------------------------------------------------------------------


def _get(url: str, user_agent: str, timeout: float) -> Fetched:
    request = urllib.request.Request(url, headers={"User-Agent": user_agent, "Accept": "*/*"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_BYTES)
            return Fetched(FOUND, body.decode("utf-8", "replace"), response.status)
    except urllib.error.HTTPError as exc:
        if exc.code == 429 or exc.code >= 500:
            return Fetched(UNREACHABLE, status=exc.code, why=f"HTTP {exc.code}")
        return Fetched(NONE, status=exc.code, why=f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        text = str(reason)
        if text.startswith("blocked_"):  # the address guard: the host's images are refused the same way
            return Fetched(NONE, why=text.split(":", 1)[0])
        return Fetched(UNREACHABLE, why=f"{type(reason).__name__}: {text}"[:200])


NOT_ASKED = "not asked"


def _declaration(origin: str, user_agent: str, timeout: float) -> Fetched:
    fetched = _get(origin + TDMREP_PATH, user_agent, timeout)
    if fetched.outcome == FOUND and not fetched.body.lstrip().startswith("["):
        return Fetched(NONE, status=fetched.status, why="not a JSON array")  # an HTML 'not found' page
    return fetched


# -- the cache on the storage root ---------------------------------------------------------------------------


def cache_path(cache_dir: str, origin: str) -> str:
    from ..core import storage

    digest = hashlib.sha1(origin.encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", origin.split("://", 1)[1])[:80]
    return storage.join(cache_dir, digest[:2], f"{safe}-{digest[:12]}.json")


def machine_copy(cache_dir: str) -> str | None:
    """This machine's copy of a remote storage root's cache (None for a local one): a host this machine's
    partitions met before is read from its own disk, not from the storage root again. A large host has
    URLs in every partition; without the copy each partition would read its answers from S3 again."""
    from ..core import storage

    if storage.is_local(cache_dir):
        return None
    key = hashlib.sha1(cache_dir.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), "datacomp-host-rules", key)


def _read(path: str) -> HostRules | None:
    from ..core import storage

    try:
        return HostRules.from_json(storage.read_json(path)) if storage.exists(path) else None
    except (ValueError, KeyError, TypeError, OSError):
        return None  # a torn or foreign file: fetched again


def _store(cache_dir: str, rules: HostRules, shared: bool = True) -> None:
    """Into the storage root's cache (`shared`) and this machine's copy of it; a host that could not be asked
    is not stored: the next partition asks it again (a host that is down costs one failed connection per
    partition, as its images would), and a task's retry finds it back up."""
    from ..core import storage

    if rules.unreachable:
        return
    local = machine_copy(cache_dir)
    if shared:
        storage.write_json(cache_path(cache_dir, rules.origin), rules.to_json())
    if local:
        storage.write_json(cache_path(local, rules.origin), rules.to_json())


def _read_cached(cache_dir: str, origin: str, usable) -> HostRules | None:
    """The origin's answers: this machine's copy when `usable`, else the storage root's (copied here)."""
    local = machine_copy(cache_dir)
    if local:
        rules = _read(cache_path(local, origin))
        if usable(rules):
            return rules
    rules = _read(cache_path(cache_dir, origin))
    if local and usable(rules):
        _store(cache_dir, rules, shared=False)
    return rules


@dataclass
class RulesRun:
    """The rules of a partition's origins, and what getting them cost."""

    rules: dict[str, HostRules]
    fetched: int = 0  # origins fetched now (two requests each with TDMRep)
    cached: int = 0  # from the cache, `shared` of them fetched meanwhile by a partition running beside this one
    requests: int = 0
    shared: int = 0


def _usable(rules: HostRules | None, now: float, max_age_s: float, robots_txt: bool, tdmrep: bool) -> bool:
    return rules is not None and rules.fresh(now, max_age_s) and not (
        (robots_txt and rules.robots.why == NOT_ASKED) or (tdmrep and rules.tdmrep.why == NOT_ASKED))


def claim_life(timeout: float) -> float:
    """How long a partition's claim on asking a host holds (host_claims.py): its two requests' timeouts,
    and a minute for the pause between them and for the partition's other hosts."""
    return 2 * timeout + 60.0


def _ask(origins: list[str], pool: ThreadPoolExecutor, user_agent: str, timeout: float, robots_txt: bool,
         tdmrep: bool, interval: float, agent: str, done) -> dict[str, HostRules]:
    """Fetch every origin's files: all robots.txt, then all tdmrep.json, so that a host's second request comes
    after the others' first, its pace (or Crawl-delay) apart from its first without holding a thread meanwhile;
    `done(rules)` as each origin's answer is complete."""
    def robots(origin: str) -> tuple[Fetched, float]:
        got = _get(origin + ROBOTS_PATH, user_agent, timeout) if robots_txt else Fetched(NONE, why=NOT_ASKED)
        return got, time.monotonic()

    first = dict(zip(origins, pool.map(robots, origins)))

    def declaration(origin: str) -> HostRules:
        got, at = first[origin]
        second = Fetched(NONE, why=NOT_ASKED)
        if tdmrep:
            delay = crawl_delay(HostRules(origin, 0.0, got, Fetched(NONE)), agent) or 0.0
            time.sleep(max(0.0, max(interval, delay) - (time.monotonic() - at)))
            second = _declaration(origin, user_agent, timeout)
        rules = HostRules(origin, time.time(), got, second)
        done(rules)
        return rules

    return dict(zip(origins, pool.map(declaration, origins)))


def rules_for(origins: Iterable[str], cache_dir: str, user_agent: str, timeout: float, max_age_s: float,
              robots_txt: bool = True, tdmrep: bool = True, threads: int = 32, interval: float = 0.0,
              agent: str = "", claims_dir: str | None = None) -> RulesRun:
    """Every origin's rules: from the cache when fresh, fetched (and cached) otherwise, `threads` requests at
    once, an origin's two requests at least `interval` apart (its Crawl-delay for `agent` where longer).

    With `claims_dir`, the origins missing from the cache are claimed first (host_claims.py): those another
    partition is asking now are not asked again, their answers are waited for."""
    from . import host_claims

    origins = sorted(set(origins))
    now = time.time()
    with ThreadPoolExecutor(max(1, min(threads, len(origins) or 1))) as pool:
        def usable(rules: HostRules | None) -> bool:
            return _usable(rules, now, max_age_s, robots_txt, tdmrep)

        cached = dict(zip(origins, pool.map(lambda o: _read_cached(cache_dir, o, usable), origins)))
        stale = [o for o in origins if not usable(cached[o])]
        claims = {o: cache_path(claims_dir, o) for o in stale} if claims_dir else {}
        since = time.time()
        token, mine, others = host_claims.take(claims, claim_life(timeout), pool) if claims else ("", stale, [])

        def done(rules: HostRules) -> None:
            _store(cache_dir, rules)
            if claims:
                host_claims.finish(claims[rules.origin], token, rules.to_json() if rules.unreachable else None)

        ask = (pool, user_agent, timeout, robots_txt, tdmrep, interval, agent)
        fetched = _ask(mine, *ask, done)

        def landed(origin: str) -> HostRules | None:  # the claimer's answer, once in the cache
            rules = _read_cached(cache_dir, origin, usable)
            return rules if usable(rules) else None

        shared = host_claims.wait({o: claims[o] for o in others}, landed, HostRules.from_json, since,
                                  pool) if others else {}
        again = [o for o in others if shared[o] is None]  # its claimer's time ran out: asked here after all
        fetched |= _ask(again, *ask, lambda rules: _store(cache_dir, rules))
    answers = {o: r for o, r in shared.items() if r is not None} | fetched
    asked = len(mine) + len(again)
    return RulesRun({o: answers.get(o) or cached[o] for o in origins}, fetched=asked,
                    cached=len(origins) - asked, requests=asked * (int(robots_txt) + int(tdmrep)),
                    shared=len(others) - len(again))


# -- a partition's URLs screened by their hosts' rules ---------------------------------------------------------


@dataclass
class Screened:
    """What `screen` decided: the rows to download (hosts interleaved), each host's request interval, and
    per URL decided without a request its (uid, url, status, why)."""

    todo: pa.Table
    intervals: dict[str, float]
    decided: list[tuple[str, str, str, str]]
    report: dict
    asked_now: set[str]  # hosts whose rules were fetched just now: their first image waits its turn
    rules: dict[str, HostRules]  # per origin: what redirects within the partition are judged by


def _spread(hosts: list[str]) -> list[int]:
    """An order of the rows in which each host's rows are spread evenly over the whole list: a host's turn
    comes back at its share of the list, so a large host does not hold every download thread at once."""
    seen: dict[str, int] = {}
    rank = []
    for host in hosts:
        rank.append(seen.get(host, 0))
        seen[host] = rank[-1] + 1
    keys = [((r + 0.5) / seen[h], i) for i, (h, r) in enumerate(zip(hosts, rank))]
    return [i for _, i in sorted(keys)]


def screen(table: pa.Table, settings: dict) -> Screened:
    """`table`'s URLs (uid, url, ...) judged by their hosts' rules (`settings`: robots_txt, tdmrep,
    cache_dir, user_agent, agent, timeout, max_age_s, per_host_rps, threads)."""
    from .url_fetch import InvalidURL, request_url

    started = time.time()
    urls = table["url"].to_pylist()
    origins = []
    for url in urls:
        try:
            origins.append(origin_of(request_url(url)) if isinstance(url, str) else None)
        except InvalidURL:
            origins.append(None)  # refused unfetched by the download, with its reason
    asked = settings["robots_txt"] or settings["tdmrep"]
    agent = settings["agent"]
    base = PACE_MARGIN / settings["per_host_rps"] if settings["per_host_rps"] else 0.0
    run = rules_for([o for o in origins if o], settings["cache_dir"], settings["user_agent"], settings["timeout"],
                    settings["max_age_s"], settings["robots_txt"], settings["tdmrep"], settings.get("threads", 32),
                    base, agent, settings.get("claims_dir")) if asked else RulesRun({})
    tdm = {o: tdm_rules(r) for o, r in run.rules.items()} if settings["tdmrep"] else {}
    keep, decided, counts = [], [], {}
    uids = table["uid"].to_pylist()
    for i, (url, origin) in enumerate(zip(urls, origins)):
        status, why = None, ""
        if origin and asked:
            status, why = decide(run.rules[origin], url, agent, tdm.get(origin, []))
        if status:
            decided.append((uids[i], url, status, why))
            counts[status] = counts.get(status, 0) + 1
        else:
            keep.append(i)
    base = 1.0 / settings["per_host_rps"] if settings["per_host_rps"] else 0.0
    intervals: dict[str, float] = {}  # seconds between two requests to a host (the gates add PACE_MARGIN)
    for i in keep:
        if origins[i]:
            host = urlsplit(origins[i]).hostname
            delay = crawl_delay(run.rules[origins[i]], agent) if origins[i] in run.rules else None
            intervals[host] = max(intervals.get(host, base), delay or 0.0)
    todo = table.take(pa.array([keep[j] for j in _spread([urlsplit(origins[i]).hostname or "" if origins[i]
                                                          else "" for i in keep])], pa.int64()))
    report = {"origins": len(run.rules), "fetched": run.fetched, "seconds": round(time.time() - started, 3),
              "cached": run.cached, "shared": run.shared, "requests": run.requests,
              "decided": counts, "crawl_delayed": sum(1 for v in intervals.values() if v > base)}
    asked_now = {urlsplit(o).hostname for o, r in run.rules.items() if r.fetched_at >= started}
    return Screened(todo, intervals, decided, report, asked_now, run.rules)
