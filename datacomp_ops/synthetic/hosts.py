"""The synthetic web's many hosts, and what each says about being downloaded from.

A world generated with ``hosts=N`` (CrawlSpec) puts each page and its images on one of N hosts,
``s000.synthetic.test`` to ``s{N-1}.synthetic.test``, at the image server's port. ``.test`` never
resolves on the real web (RFC 2606): the download resolves these names to the server's loopback address
through ``download.host_addresses: ["*.synthetic.test=127.0.0.1"]``, and the address guard still
judges that address (the server's port is allowed as before). The server answers every name itself and
tells them apart by the Host header.

Most hosts say nothing (no robots.txt, no tdmrep.json: 404). Host i with i % 40 in POLICIES says:

- 1: robots.txt disallows ``/img/shape/red/`` for every agent;
- 2: robots.txt disallows everything to the platform's agent (``datacomp-platform``), nothing to others;
- 3: tdmrep.json reserves TDM rights on ``/img/*``;
- 4: every image it serves carries the ``tdm-reservation: 1`` header;
- 5: it serves at most RATE_LIMIT requests a second and answers more with 429 ``Retry-After: 2``,
  serving nothing else until then (the default pace, 5 a second, stays under it);
- 8: robots.txt asks for ``Crawl-delay: 1``;
- 9: robots.txt answers 503 (RFC 9309: try later; ``robots_unavailable``);

and host 6 answers its robots.txt only after the server's hang time (a ``timeout``: try later).

`expected_status` is what the host's rules make of a path, by the plain reading of the files above
(not by the platform's parser): the truth the tests check the download's ledger against.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DOMAIN = "synthetic.test"
PINNED = f"*.{DOMAIN}=127.0.0.1"
AGENT = "datacomp-platform"
RATE_LIMIT = 8
RETRY_AFTER_S = 2
ROBOTS_HANG_HOST = 6
_NAME = re.compile(rf"^s(\d{{3}})\.{re.escape(DOMAIN)}$")
# hosts that say nothing at all, whatever their number (a benchmark's web where no host's rules bind)
PLAIN_PREFIX = "p"


@dataclass(frozen=True)
class HostPolicy:
    robots: str | None = None  # robots.txt's body; None: 404
    robots_hangs: bool = False
    robots_error: bool = False  # robots.txt answers 503
    tdmrep: str | None = None  # tdmrep.json's body; None: 404
    tdm_header: bool = False  # images carry tdm-reservation: 1
    rate_limit: int | None = None  # requests a second it serves; more get 429 Retry-After


PLAIN = HostPolicy()
POLICIES = {
    1: HostPolicy(robots="User-agent: *\nDisallow: /img/shape/red/\n"),
    2: HostPolicy(robots=f"User-agent: {AGENT}\nDisallow: /\n\nUser-agent: *\nAllow: /\n"),
    3: HostPolicy(tdmrep=json.dumps([{"location": "/img/*", "tdm-reservation": 1,
                                      "tdm-policy": "https://rights.example/tdm-policy.json"}])),
    4: HostPolicy(tdm_header=True),
    5: HostPolicy(rate_limit=RATE_LIMIT),
    8: HostPolicy(robots="User-agent: *\nCrawl-delay: 1\n"),
    9: HostPolicy(robots_error=True),
}


def host_name(i: int, plain: bool = False) -> str:
    return f"{PLAIN_PREFIX if plain else 's'}{i:03d}.{DOMAIN}"


def host_base(base_url: str, i: int, plain: bool = False) -> str:
    """The URL base of host i of a world whose server is `base_url` (its scheme and port); `plain`: one of the
    hosts that say nothing."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{host_name(i, plain)}" + (f":{parts.port}" if parts.port else "")


def index_of(host: str) -> int | None:
    found = _NAME.match((host or "").split(":")[0].lower())
    return int(found.group(1)) if found else None


def policy(host: str) -> HostPolicy:
    i = index_of(host)
    if i is None:
        return PLAIN
    if i == ROBOTS_HANG_HOST:
        return HostPolicy(robots_hangs=True)
    return POLICIES.get(i % 40, PLAIN)


def rules_say(rules: HostPolicy, path: str, served_status: str = "served") -> str | None:
    """The status a host's rules give one path (the TDM header's only once it is served), or None."""
    if rules.robots_hangs:
        return "timeout"
    if rules.robots_error:
        return "robots_unavailable"
    if rules.robots and f"User-agent: {AGENT}\nDisallow: /\n" in rules.robots:
        return "disallowed_robots"
    if rules.robots and "Disallow: /img/shape/red/" in rules.robots and path.startswith("/img/shape/red/"):
        return "disallowed_robots"
    if rules.tdmrep and path.startswith("/img/"):
        return "tdm_reserved"
    if rules.tdm_header and path.startswith("/img/") and served_status != "http_error":
        return "tdm_reserved"  # the header is read before the body
    return None


def expected_status(url: str, served_status: str) -> str:
    """What a URL of the world ends as: its host's rules first (for a /redirect/ URL, on its own path, then
    on the path it redirects to, on the same host), else what the server's answer makes of it
    (`served_status`, the URL's kind's status on a host that says nothing)."""
    parts = urlsplit(url)
    rules = policy(parts.netloc)
    paths = [parts.path] + ([parts.path[len("/redirect"):]] if parts.path.startswith("/redirect/") else [])
    return next((s for s in (rules_say(rules, p, served_status) for p in paths) if s), served_status)
