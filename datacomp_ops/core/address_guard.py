"""The downloader's guard: a crawl is untrusted input and must not reach the cluster's own services.

A URL in a WAT file can name the cloud's metadata service, the Airflow API, Redis,
Postgres or an internal S3. Checking URLs before the download misses hostnames that
resolve to such addresses, the many spellings of one address (``2130706433``,
``0177.0.0.1``, ``0x7f.1``, ``[::ffff:127.0.0.1]``) and redirects; so the check sits
where every connection of the downloader is made, ``socket.getaddrinfo``, and looks at
the addresses a name resolved to. A host any of whose addresses is blocked is refused
as a whole (no partial answers for a name that mixes public and private addresses).

The refusal is an ``OSError`` whose message starts with the ledger status
(``blocked_loopback: ...``), which img2dataset records as the URL's error and
``download.classify_failure`` reads back.

Allowed despite all this: the entries of ``download.allowed_private_addresses``, each a
network (``127.0.0.0/8``, ``::1``: any port) or one address and port (``127.0.0.1:8765``,
``[::1]:8765``). The embedded demo allows the port of its synthetic image server, nothing else.

Proxies. Through an HTTP proxy, ``getaddrinfo`` resolves only the proxy's name, and the proxy
would fetch any URL it is sent, the metadata service's included. So the download ignores the
environment's proxies (``http_proxy``, ``HTTPS_PROXY``, ...: the runner drops every ``*_proxy``
variable and urllib is given an explicit, empty proxy table, which on macOS also keeps the
system's proxy out). The one proxy it uses is ``download.proxy``; then urllib's proxy handler
resolves and judges each URL's own host, redirects included, before the request is handed to
the proxy, and only the proxy's own address and port (configuration, like the S3 endpoint) is
added to what the sockets may reach. The proxy resolves the name again: a name that answers
differently the second time (DNS rebinding) can only be stopped by the proxy's own rules.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Iterable, MutableMapping, Sequence
from urllib.parse import urlsplit

# how the download passes download.allowed_private_addresses to its processes (a JSON list)
ALLOWED_ENV = "DATACOMP_ALLOWED_PRIVATE_ADDRESSES"
# and download.proxy ("" for none); not a *_proxy name, which urllib would read and the runner drops
PROXY_ENV = "DATACOMP_DOWNLOAD_PROXY_URL"
# and download.host_addresses (a JSON list of NAME=ADDRESS)
HOSTS_ENV = "DATACOMP_HOST_ADDRESSES"

# the resolver itself, whatever install() later puts in its place
_system_getaddrinfo = socket.getaddrinfo

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services: AWS (also its IPv6 and ECS task endpoints), GCP and Azure
# share 169.254.169.254; Alibaba's and Oracle's own.
METADATA_SERVICES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192"))
_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))
_THIS_HOST = (ipaddress.ip_network("0.0.0.0/8"), ipaddress.ip_network("::/128"))  # connect to the local host

# IPv6 forms that carry an IPv4 address, judged by that address: a NAT64 gateway, a 6to4 or Teredo
# relay, or a dual-stack host's own kernel would deliver them to it. ipaddress knows the mapped,
# 6to4 and Teredo forms; the others are below.
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # RFC 4291, deprecated; :: and ::1 are IPv6's own
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix: /96 only
# RFC 8215's local-use prefix, with a network's own RFC 6052 prefix length inside it (/48 up to /96),
# which the guard cannot know: every reading is judged, but for those in 0.0.0.0/8 (the zero padding
# of a longer or shorter prefix's form; no translator forwards to "this network")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_NAT64_LOCAL_SHORTER = (48, 56, 64)  # readings beside /96's, valid only where bits 64-71 ("u") are zero
# Not ISATAP (::5efe:a.b.c.d in the interface identifier): its IPv4 address lives inside the site
# the IPv6 prefix routes to, so a private one there is a remote site's host, not one of ours.

# Ledger statuses, most specific first (a metadata address is also link-local).
BLOCKED_STATUSES = ("blocked_metadata_service", "blocked_loopback", "blocked_link_local", "blocked_private",
                    "blocked_reserved")


class BlockedAddressError(OSError):
    """A connection to an address the download must not reach; the message starts with its status."""

    def __init__(self, status: str, host: str, address: IPAddress, carried: Sequence[IPAddress] = ()):
        self.status = status
        shown = "" if str(host) == str(address) else f" (host {host!r})"
        if carried:  # an IPv6 form judged by the IPv4 address inside it
            shown += f" (carrying {', '.join(map(str, carried))})"
        super().__init__(f"{status}: {address}{shown} is a {status.removeprefix('blocked_').replace('_', ' ')} "
                         f"address; download.allowed_private_addresses does not allow it")


def _rfc6052_ipv4(value: int, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address in an RFC 6052 address with that prefix length (bits 64-71, "u", are skipped)."""
    if prefix_length == 96:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    without_u = ((value >> 64) << 56) | (value & ((1 << 56) - 1))  # 120 bits
    return ipaddress.IPv4Address((without_u >> (120 - prefix_length - 32)) & 0xFFFFFFFF)


def _embedded_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries (none for one that carries none, or an IPv4 one)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return ()
    value = int(ip)
    if ip.ipv4_mapped:
        return (ip.ipv4_mapped,)
    if ip in _IPV4_TRANSLATED or (ip in _IPV4_COMPATIBLE and value > 1):
        return (ipaddress.IPv4Address(value & 0xFFFFFFFF),)
    if ip in _NAT64:
        return (_rfc6052_ipv4(value, 96),)
    if ip in _NAT64_LOCAL:
        readings = [_rfc6052_ipv4(value, n) for n in _NAT64_LOCAL_SHORTER if not (value >> 56) & 0xFF]
        readings.append(_rfc6052_ipv4(value, 96))
        return tuple(dict.fromkeys(r for r in readings if r not in _THIS_HOST[0])) or (readings[-1],)
    if ip.sixtofour:
        return (ip.sixtofour,)
    if ip.teredo:
        return ip.teredo  # (server, client): the client's IPv4 is stored inverted, ipaddress undoes it
    return ()


def _parse(address: str | IPAddress) -> IPAddress:
    return ipaddress.ip_address(str(address).split("%", 1)[0])  # without an IPv6 scope id (fe80::1%eth0)


def _status(ip: IPAddress) -> str | None:
    if ip in METADATA_SERVICES:
        return "blocked_metadata_service"
    if ip.is_loopback or any(ip in net for net in _THIS_HOST if net.version == ip.version):
        return "blocked_loopback"
    if ip.is_link_local:
        return "blocked_link_local"
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return "blocked_private"
    if not ip.is_global or ip.is_multicast:
        return "blocked_reserved"
    return None


def classify(address: str | IPAddress) -> str | None:
    """The blocked status of an address, or None for a public one.

    An IPv6 address that carries IPv4 addresses is judged by them alone (the IPv6 forms themselves
    are not "global" to ipaddress), by the most specific status any of them has."""
    ip = _parse(address)
    found = {_status(v4) for v4 in _embedded_ipv4(ip)} or {_status(ip)}
    return next((s for s in BLOCKED_STATUSES if s in found), None)


@dataclass(frozen=True)
class Allowance:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = None

    def admits(self, ip: IPAddress, port: int | None) -> bool:
        return ip.version == self.network.version and ip in self.network and self.port in (None, port)


_BRACKETED = re.compile(r"\[([^\]]+)\](?::(\d+))?")


def parse_allowance(entry: str) -> Allowance:
    """``NETWORK`` (any port), ``ADDRESS:PORT`` or ``[IPV6]:PORT``; a bad entry raises ValueError naming it."""
    text = str(entry).strip()
    bracketed = _BRACKETED.fullmatch(text)
    if bracketed:
        net, port = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        net, port = text.split(":")
    else:
        net, port = text, None
    try:
        network = ipaddress.ip_network(net, strict=False)
        number = int(port) if port is not None else None
    except ValueError as exc:
        raise ValueError(f"{entry!r} is not a network (127.0.0.0/8), ADDRESS:PORT or [IPV6]:PORT: {exc}") from None
    if number is not None and not 0 < number < 65536:
        raise ValueError(f"{entry!r}: port {number} is out of range")
    return Allowance(network, number)


class AddressPolicy:
    """Which resolved addresses a download may connect to."""

    def __init__(self, allowed: Iterable[str] = ()):
        self.allowances = tuple(parse_allowance(a) for a in allowed)

    def check(self, host: str, port: int | str | None, addresses: Sequence[str]) -> None:
        """Raise BlockedAddressError if any of `addresses` (what `host` resolved to) is blocked."""
        port = int(port) if isinstance(port, int) or (isinstance(port, str) and port.isdigit()) else None
        for address in addresses:
            ip = _parse(address)
            status = classify(ip)
            if status is None or self._admits(ip, port):
                continue
            carried = _embedded_ipv4(ip)
            # an IPv6 form is admitted when every blocked IPv4 address it carries is
            if carried and all(_status(v4) is None or self._admits(v4, port) for v4 in carried):
                continue
            raise BlockedAddressError(status, host, ip, carried)

    def _admits(self, ip: IPAddress, port: int | None) -> bool:
        return any(a.admits(ip, port) for a in self.allowances)


def endpoint_allowances(endpoint: str | None) -> list[str]:
    """ADDRESS:PORT of a service the configuration names, resolved here: the S3-compatible store the
    download's own processes write the shards to (MinIO beside the workers), or download.proxy.
    Configuration, not crawl input, so allowed."""
    if not endpoint:
        return []
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return []
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = _system_getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError:
        return []  # unresolvable here: the connections fail with their own error
    return sorted({f"[{i[4][0]}]:{port}" if ":" in i[4][0] else f"{i[4][0]}:{port}" for i in infos})


class PinnedNames:
    """download.host_addresses: names the download resolves to a given address, as curl's --resolve does
    (``img.example.org=10.1.2.3``, ``*.polite.test=127.0.0.1`` for a name and its subdomains). The address
    is judged by the guard like any other: a pinned private address still needs its allowance."""

    def __init__(self, entries: Iterable[str] = ()):
        self.exact: dict[str, str] = {}
        self.suffixes: list[tuple[str, str]] = []
        for entry in entries:
            name, sep, address = str(entry).partition("=")
            name = name.strip().lower().rstrip(".")
            try:
                ipaddress.ip_address(address.strip())
            except ValueError:
                raise ValueError(f"{entry!r} is not NAME=ADDRESS (img.example.org=10.1.2.3, "
                                 f"*.polite.test=127.0.0.1)") from None
            if not sep or not name or name == "*" or "*" in name.removeprefix("*."):
                raise ValueError(f"{entry!r}: the name is a host name, or *.DOMAIN for its subdomains")
            if name.startswith("*."):
                self.suffixes.append((name[1:], address.strip()))
            else:
                self.exact[name] = address.strip()

    def address(self, host) -> str | None:
        if not isinstance(host, str):
            return None
        name = host.lower().rstrip(".")
        return self.exact.get(name) or next((a for suffix, a in self.suffixes if name.endswith(suffix)), None)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def parse_proxy(url: str | None) -> str:
    """download.proxy: "" for none, or ``http://[user:password@]host[:port]``; ValueError otherwise.

    Only http://: urllib speaks plain HTTP to a proxy (https URLs go through it by CONNECT) and
    cannot open TLS to the proxy itself for https URLs."""
    text = (url or "").strip()
    if not text:
        return ""
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"{_redacted(text)!r}: {exc}") from None
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{_redacted(text)!r} is not an http:// proxy URL such as http://proxy.example:3128")
    return text


def _request_targets(req: urllib.request.Request) -> list[tuple[str, int]]:
    """(host, port) a proxy may take the request for: as the URL reads (the proxy parses the absolute
    URL of an http request) and as urllib read it (the CONNECT target of an https one). Both are judged,
    so a URL that parsers read differently cannot slip one reading past the guard."""
    default = 443 if req.type == "https" else 80
    targets = []
    for netloc in (urlsplit(req.full_url).netloc, req.host or ""):
        parts = urlsplit("//" + netloc)
        if parts.hostname and (parts.hostname, parts.port or default) not in targets:
            targets.append((parts.hostname, parts.port or default))
    return targets


class GuardedProxyHandler(urllib.request.ProxyHandler):
    """urllib's proxy handler with exactly `proxies` (never the environment's or the system's),
    which judges each URL's own host by `policy` before the request is handed to the proxy."""

    def __init__(self, proxies: dict[str, str], policy: AddressPolicy):
        super().__init__(proxies)
        self.policy = policy

    def proxy_open(self, req, proxy, type):  # noqa: A002 - urllib's signature
        unresolved = None
        for host, port in _request_targets(req):
            try:
                infos = _system_getaddrinfo(_pinned.address(host) or host, port, type=socket.SOCK_STREAM)
            except OSError as exc:  # fail closed: a name the guard cannot judge is not sent on
                unresolved = unresolved or exc
                continue
            try:
                self.policy.check(host, port, [info[4][0] for info in infos])
            except BlockedAddressError as exc:  # as urllib reports a direct connection's: "<urlopen error ...>"
                raise urllib.error.URLError(exc) from None
        if unresolved is not None:
            raise urllib.error.URLError(unresolved)
        return super().proxy_open(req, proxy, type)


def drop_proxy_variables(environ: MutableMapping[str, str]) -> list[str]:
    """Remove every ``*_proxy`` variable (any case, as urllib reads them) from `environ`; their names."""
    names = sorted(n for n in environ if n.lower().endswith("_proxy"))
    for name in names:
        del environ[name]
    return names


_installed: AddressPolicy | None = None


_pinned = PinnedNames()


def install(allowed: Iterable[str] = (), proxy: str = "", pinned: Iterable[str] = ()) -> AddressPolicy:
    """Guard every connection of this process (urllib's, hence img2dataset's) by `allowed`, and send
    urllib's requests through `proxy` only ("" for none), each URL's host judged before it goes there;
    the names `pinned` (download.host_addresses) resolve to their given addresses."""
    global _installed, _pinned
    allowed = list(allowed)
    proxy = parse_proxy(proxy)
    # the sockets may reach the proxy itself too; the URLs handed to it may not name it
    policy = AddressPolicy(allowed + endpoint_allowances(proxy))
    _pinned = PinnedNames(pinned)
    if _installed is None:
        def guarded_getaddrinfo(host, port, *args, **kwargs):
            infos = _system_getaddrinfo(_pinned.address(host) or host, port, *args, **kwargs)
            _installed.check(host, port, [info[4][0] for info in infos])
            return infos

        socket.getaddrinfo = guarded_getaddrinfo
    _installed = policy
    # img2dataset calls urllib.request.urlopen, which uses the installed opener
    proxies = {"http": proxy, "https": proxy} if proxy else {}
    global _proxy_handler
    _proxy_handler = GuardedProxyHandler(proxies, AddressPolicy(allowed))
    install_opener()
    return policy


_proxy_handler: GuardedProxyHandler | None = None


def install_opener(*handlers: urllib.request.BaseHandler) -> None:
    """urllib's opener for this process: the guard's proxy handler, and `handlers` (polite_fetch's redirect
    check); call after `install`."""
    if _proxy_handler is None:
        raise RuntimeError("address_guard.install comes first: the opener holds its proxy handler")
    urllib.request.install_opener(urllib.request.build_opener(_proxy_handler, *handlers))
