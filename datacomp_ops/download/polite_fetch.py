"""Requests that keep to each host's pace, across all of a partition's download processes and threads.

img2dataset fetches with ``processes_count`` forked processes of ``thread_count`` threads each; none of
them knows what the others send to a host. `install` (in the download runner, before img2dataset forks)
puts one gate per host in shared memory and replaces img2dataset's fetch function with `fetch`, which
asks the gate before every request (retries included):

- **pace**: requests to one host leave at least ``1 / download.per_host_rps`` seconds apart (the host's
  robots.txt Crawl-delay where that is longer), times ``host_rules.PACE_MARGIN``, counted from the turn
  a request takes and again from the moment its connection opens (a busy machine can delay a thread
  between the two);
- **connections**: at most ``download.per_host_connections`` requests open to one host at once;
- **Retry-After**: a 429, or a 503 with ``Retry-After`` (seconds or an HTTP date), pauses the host for
  that long (at most ``download.retry_after_max_s``; a 429 without the header: a minute); its URLs
  not fetched yet are not requested in this partition: ``host_paused``, postponed to a later run and
  never counted as a failure (the URL that got the answer too);
- **redirects**: a redirect's target is judged by its host's rules (fetched then for a host the partition
  did not hold) before it is requested: ``disallowed_robots`` or ``tdm_reserved`` as for the URL itself;
  and it waits for its host's turn like any request;
- **timeouts**: a host's second timeout in a row makes its next request wait 1 s, the third 2 s, then
  4, 8... up to ``download.host_backoff_max_s``; any answer resets it. Other hosts are not slowed.

Each request carries the platform's User-Agent (``user_agent_token/version (+contact_url)``), and a
response whose ``tdm-reservation`` header is ``1`` (TDMRep) is refused like an ``X-Robots-Tag:
noai`` one: ``tdm_reserved``.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import math
import multiprocessing
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from . import host_rules
from .host_rules import PACE_MARGIN

PAUSED = "host_paused"
RESERVED_HEADER = "tdm_reserved: the response's tdm-reservation header reserves TDM rights"
DEFAULT_PAUSE_S = 60.0  # a 429 that does not say how long


def user_agent(token: str, contact_url: str = "") -> str:
    """The platform's User-Agent: its robots.txt product token and version, and where to reach whoever runs it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("datacomp-platform")
    except PackageNotFoundError:
        release = "0"
    return f"{token}/{release}" + (f" (+{contact_url})" if contact_url else "")


def hostname(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (a number, or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HostGates:
    """Per-host pace, open connections, pause and timeout backoff, in memory shared by forked processes."""

    def __init__(self, intervals: dict[str, float], connections: int, retry_after_max_s: float,
                 backoff_max_s: float, asked_now: set[str] = frozenset()):
        ctx = multiprocessing.get_context("fork")
        self.index = {host: i for i, host in enumerate(intervals)}
        self.interval = [intervals[h] * PACE_MARGIN for h in intervals]
        self.connections = connections or math.inf
        self.retry_after_max_s, self.backoff_max_s = retry_after_max_s, backoff_max_s
        n = max(1, len(intervals))
        self.next_at, self.open = ctx.RawArray("d", n), ctx.RawArray("i", n)
        self.paused_until, self.said = ctx.RawArray("d", n), ctx.RawArray("d", n)
        self.timeouts, self.wait_until = ctx.RawArray("i", n), ctx.RawArray("d", n)
        self.lock = ctx.Lock()
        now = time.monotonic()
        for host in asked_now & self.index.keys():  # its robots.txt and tdmrep.json were its last requests
            self.next_at[self.index[host]] = now + self.interval[self.index[host]]

    def acquire(self, host: str) -> str | None:
        """Wait for the host's turn; a reason not to request it at all (it asked for a pause), or None."""
        i = self.index.get(host)
        if i is None:
            return None
        while True:
            with self.lock:
                now = time.monotonic()
                if self.paused_until[i] > now:
                    return (f"{PAUSED}: {host} asked to wait {self.said[i]:.0f} s (Retry-After; paused "
                            f"{min(self.said[i], self.retry_after_max_s):.0f} s); its URLs are tried again by a "
                            f"later run")
                ready = max(self.next_at[i], self.wait_until[i])
                if self.open[i] < self.connections and now >= ready:
                    self.open[i] += 1
                    self.next_at[i] = now + self.interval[i]
                    return None
                delay = ready - now if self.open[i] < self.connections else 0.01
            time.sleep(min(max(delay, 0.001), 0.25))

    def sent(self, host: str) -> None:
        """The host's request left now (its connection opened): its next one leaves a whole pace later, however
        long this one waited between its turn and its connection (a busy machine delays threads)."""
        i = self.index.get(host)
        if i is None:
            return
        with self.lock:
            self.next_at[i] = max(self.next_at[i], time.monotonic() + self.interval[i])

    def release(self, host: str, outcome: str, pause_s: float | None = None) -> None:
        """`outcome`: "answer" (any HTTP answer), "timeout", or "pause" (with the seconds the host asked for)."""
        i = self.index.get(host)
        if i is None:
            return
        with self.lock:
            now = time.monotonic()
            self.open[i] -= 1
            if outcome == "timeout":
                self.timeouts[i] += 1
                if self.timeouts[i] >= 2:
                    self.wait_until[i] = now + min(2.0 ** (self.timeouts[i] - 2), self.backoff_max_s)
            else:
                self.timeouts[i] = 0
            if outcome == "pause":
                self.said[i] = pause_s
                self.paused_until[i] = max(self.paused_until[i], now + min(pause_s, self.retry_after_max_s))


_gates: HostGates | None = None
_settings: dict = {}
_rules: dict = {}  # origin -> host_rules.HostRules: the partition's, and redirect targets' as they come


class RuleRefusal(OSError):
    """A redirect to a URL its host's rules refuse; the message starts with the ledger status."""


def judge(url: str) -> tuple[str | None, str]:
    """(status, why) of `url` by its host's rules, fetched now (and cached) for a host the partition did
    not hold: a redirect may lead anywhere."""
    origin = host_rules.origin_of(url)
    if origin is None or not (_settings.get("robots_txt") or _settings.get("tdmrep")):
        return None, ""
    if origin not in _rules:
        s = _settings
        _rules.update(host_rules.rules_for([origin], s["cache_dir"], s["user_agent"], s["timeout"], s["max_age_s"],
                                           s["robots_txt"], s["tdmrep"], 1, 0.0, s["agent"],
                                           s.get("claims_dir")).rules)
    return host_rules.decide(_rules[origin], url, _settings["agent"])


_held = threading.local()  # the host whose turn the thread's request holds now (a redirect moves it)


class _PacedHTTP(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        _gates.sent(self.host.lower())


class _PacedHTTPS(http.client.HTTPSConnection):
    def connect(self):
        super().connect()
        _gates.sent(self.host.lower())


class _PacedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_PacedHTTP, req)


class _PacedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_PacedHTTPS, req, context=self._context)


class _RedirectCheck(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, each target judged by its host's rules, then paced by its host's gate, before it
    is requested."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        status, why = judge(newurl)
        if status:
            raise RuleRefusal(f"{status}: redirected to {newurl}, which {why}")
        # the redirect's answer is in: its host's turn ends there, the target's host gives the next one
        _gates.release(_held.host, "answer")
        _held.host = None
        host = hostname(newurl)
        refused = _gates.acquire(host)
        if refused:
            raise RuleRefusal(refused)
        _held.host = host
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _timed_out(err: BaseException) -> bool:
    reason = getattr(err, "reason", err)
    return isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason).lower()


def fetch(row, timeout, user_agent_token, disallowed_header_directives):
    """img2dataset's ``download_image`` (same arguments, same (key, stream, error) answer), asking the host's
    gate first and telling it how the host answered."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    host = hostname(url)
    refused = _gates.acquire(host)
    if refused:
        return key, None, refused
    outcome, pause = "answer", None
    _held.host = host
    try:
        request = urllib.request.Request(url, data=None, headers={"User-Agent": _user_agent})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if disallowed_header_directives and is_disallowed(response.headers, user_agent_token,
                                                              disallowed_header_directives):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            if _check_tdm and (response.headers.get("tdm-reservation") or "").strip() == "1":
                return key, None, RESERVED_HEADER
            return key, io.BytesIO(response.read()), None
    except urllib.error.HTTPError as err:
        said = retry_after(err.headers.get("Retry-After") if err.headers else None)
        if err.code == 429 or (err.code == 503 and said is not None):
            outcome, pause = "pause", DEFAULT_PAUSE_S if said is None else said
            return key, None, (f"{PAUSED}: HTTP {err.code}, Retry-After {err.headers.get('Retry-After')!r}: "
                               f"{_held.host or host} paused; its URLs are tried again by a later run")
        return key, None, str(err)
    except Exception as err:  # noqa: BLE001 - as img2dataset: every failure is the URL's recorded error
        if _timed_out(err):
            outcome = "timeout"
        return key, None, str(err)
    finally:
        if _held.host is not None:
            _gates.release(_held.host, outcome, pause)


def install(screened, settings: dict) -> HostGates:
    """Gate every host the screening (host_rules.Screened) found, judge redirects by their targets' rules,
    and make img2dataset fetch through `fetch`. Call after address_guard.install and before img2dataset
    forks its processes; `settings` are the partition's (partition.polite_settings)."""
    global _gates, _user_agent, _check_tdm, _settings, _rules
    from img2dataset import downloader

    from ..core import address_guard

    _gates = HostGates(screened.intervals, settings["connections"], settings["retry_after_max_s"],
                       settings["backoff_max_s"], screened.asked_now)
    _user_agent, _check_tdm = settings["user_agent"], settings["tdmrep"]
    _settings, _rules = settings, dict(screened.rules)
    address_guard.install_opener(_RedirectCheck(), _PacedHTTPHandler(), _PacedHTTPSHandler())
    downloader.download_image = fetch  # download_image_with_retry looks it up in its module at each call
    return _gates
