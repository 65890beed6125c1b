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
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Iterable, Sequence

# how the download passes download.allowed_private_addresses to its processes (a JSON list)
ALLOWED_ENV = "DATACOMP_ALLOWED_PRIVATE_ADDRESSES"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services: AWS (also its IPv6 and ECS task endpoints), GCP and Azure
# share 169.254.169.254; Alibaba's and Oracle's own.
METADATA_SERVICES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192"))
_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))
_THIS_HOST = (ipaddress.ip_network("0.0.0.0/8"), ipaddress.ip_network("::/128"))  # connect to the local host
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# Ledger statuses, most specific first (a metadata address is also link-local).
BLOCKED_STATUSES = ("blocked_metadata_service", "blocked_loopback", "blocked_link_local", "blocked_private",
                    "blocked_reserved")


class BlockedAddressError(OSError):
    """A connection to an address the download must not reach; the message starts with its status."""

    def __init__(self, status: str, host: str, address: IPAddress):
        self.status = status
        shown = "" if str(host) == str(address) else f" (host {host!r})"
        super().__init__(f"{status}: {address}{shown} is a {status.removeprefix('blocked_').replace('_', ' ')} "
                         f"address; download.allowed_private_addresses does not allow it")


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4), where it carries one."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour:
            return ip.sixtofour
    return ip


def _parse(address: str | IPAddress) -> IPAddress:
    return ipaddress.ip_address(str(address).split("%", 1)[0])  # without an IPv6 scope id (fe80::1%eth0)


def classify(address: str | IPAddress) -> str | None:
    """The blocked status of an address, or None for a public one."""
    ip = _embedded_ipv4(_parse(address))
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
            if status is None:
                continue
            if not any(a.admits(ip, port) or a.admits(_embedded_ipv4(ip), port) for a in self.allowances):
                raise BlockedAddressError(status, host, ip)


def storage_endpoint_allowances(endpoint: str | None) -> list[str]:
    """ADDRESS:PORT of an S3-compatible store on a private network (MinIO beside the workers), which the
    download's own processes write the shards to: configuration, not crawl input, so allowed."""
    if not endpoint:
        return []
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    if not parts.hostname:
        return []
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError:
        return []  # unresolvable here: the writes fail with their own error
    return sorted({f"[{i[4][0]}]:{port}" if ":" in i[4][0] else f"{i[4][0]}:{port}" for i in infos})


_installed: AddressPolicy | None = None


def install(allowed: Iterable[str] = ()) -> AddressPolicy:
    """Guard every connection of this process (urllib's, hence img2dataset's) by `allowed`."""
    global _installed
    policy = AddressPolicy(allowed)
    if _installed is None:
        resolve = socket.getaddrinfo

        def guarded_getaddrinfo(host, port, *args, **kwargs):
            infos = resolve(host, port, *args, **kwargs)
            _installed.check(host, port, [info[4][0] for info in infos])
            return infos

        socket.getaddrinfo = guarded_getaddrinfo
    _installed = policy
    return policy
