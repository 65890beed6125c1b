"""The request a browser would make for a crawled URL, or the reason no request is made.

A crawl holds image URLs as pages wrote them: with non-ASCII characters, spaces, tabs,
backslashes, an internationalised host. A browser requests them percent-encoded (the
WHATWG URL standard). img2dataset hands them to urllib as written, which sends none of
them: http.client refuses a space (``URL can't contain control characters``) and cannot
encode a non-ASCII path (``'ascii' codec can't encode``), and such a URL was recorded as
a transient ``network_error`` that every rebuild tried again.

`request_url` encodes a URL as a browser does, and `install` makes img2dataset's downloader
request that (the uid and the ledger keep the URL as written):

- leading and trailing spaces and controls are stripped, tabs and newlines removed;
- the host is percent-decoded, lower-cased and IDNA-encoded (UTS 46, as browsers);
- the path and query are percent-encoded as UTF-8 with the standard's sets: controls,
  space, non-ASCII, ``"``, ``<``, ``>``; also backquote and braces in the path, ``'`` in the
  query; a backslash in the path is a ``/``; the fragment is not sent.

What cannot be fetched even so is refused before any connection, with a message starting
``invalid_url:``, a permanent ledger status: a scheme other than http(s) (urllib would read
a ``file:`` URL from the worker's own disk), credentials (``user:pass@``: never sent, a crawl
is not ours to log in with), a port that is not 1 to 65535, and a host no resolver can look
up (forbidden characters, an empty or over-long label, a malformed IPv6 or IPv4 address).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import unquote

INVALID = "invalid_url"

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")
_C0_OR_SPACE = "".join(map(chr, range(0x21)))
# the standard's forbidden domain code points: controls, space, DEL and # % / : < > ? @ [ \ ] ^ |
_FORBIDDEN_HOST = re.compile(r"[\x00-\x20\x7f#%/:<>?@\[\\\]^|]")
_ENDS_IN_NUMBER = re.compile(r"(?:\d+|0[xX][0-9a-fA-F]*)")


class InvalidURL(ValueError):
    def __init__(self, why: str):
        super().__init__(f"{INVALID}: {why}")


def _encoder(extra: str):
    """A percent-encoder of the C0 control set (controls, non-ASCII, DEL) plus `extra`, UTF-8."""
    keep = {c for c in map(chr, range(0x21, 0x7f)) if c not in extra}

    def encode(text: str) -> str:
        if all(c in keep for c in text):
            return text
        return "".join(c if c in keep else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
                       for c in text)
    return encode


_encode_path = _encoder(' "#<>?`{}')
_encode_query = _encoder(" \"#<>'")


def request_url(url: str) -> str:
    """`url` as a browser requests it; raises InvalidURL (its message says why) for one nothing can fetch."""
    url = url.strip(_C0_OR_SPACE).translate(_TAB_OR_NEWLINE)
    scheme = _SCHEME.match(url)
    if not scheme:
        raise InvalidURL("no scheme: not an absolute URL")
    name = scheme.group(1).lower()
    if name not in ("http", "https"):
        raise InvalidURL(f"scheme {name!r} is not fetched (only http and https)")
    rest = url[scheme.end():].lstrip("/\\")
    end = next((i for i, c in enumerate(rest) if c in "/\\?#"), len(rest))
    authority, rest = rest[:end], rest[end:]
    if "@" in authority:
        raise InvalidURL("credentials in the URL (user:password@host): a crawl's credentials are never sent")
    host, port = _host_and_port(authority)
    target, _, _ = rest.partition("#")
    path, mark, query = target.partition("?")
    path = _encode_path(path.replace("\\", "/")) or "/"
    return f"{name}://{host}{':' + port if port else ''}{path}{mark}{_encode_query(query)}"


def _host_and_port(authority: str) -> tuple[str, str]:
    if authority.startswith("["):
        literal, bracket, port = authority[1:].partition("]")
        try:
            if not bracket or "%" in literal:  # an unclosed bracket; a zone id, which URLs cannot carry
                raise ValueError
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise InvalidURL(f"host [{literal}{bracket} is not an IPv6 address") from None
        if port and not port.startswith(":"):
            raise InvalidURL(f"{port!r} after the IPv6 address is not a port")
        return f"[{literal.lower()}]", _port(port[1:])
    host, _, port = authority.partition(":")
    return _hostname(host), _port(port)


def _port(port: str) -> str:
    if not port:
        return ""
    if not port.isascii() or not port.isdigit():
        raise InvalidURL(f"port {port!r} is not a number")
    if not 0 < int(port) < 65536:
        raise InvalidURL(f"port {int(port)} is out of range (1 to 65535)")
    return str(int(port))


def _hostname(host: str) -> str:
    written = host
    try:
        host = unquote(host, errors="strict")
    except UnicodeDecodeError:
        raise InvalidURL(f"host {written!r} percent-decodes to bytes that are not UTF-8") from None
    if not host:
        raise InvalidURL("no host")
    if not host.isascii():
        host = _idna(host, written)
    host = host.lower()
    bad = _FORBIDDEN_HOST.search(host)
    if bad:
        raise InvalidURL(f"host {written!r} contains {bad.group()!r}")
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or any(not 0 < len(label) < 64 for label in labels):
        raise InvalidURL(f"host {written!r} has an empty or over-long label (DNS allows 1 to 63 characters)")
    if _ENDS_IN_NUMBER.fullmatch(labels[-1]):
        try:
            socket.inet_aton(host.removesuffix("."))  # the forms the standard's IPv4 parser accepts
        except OSError:
            raise InvalidURL(f"host {written!r} ends in a number but is not an IPv4 address") from None
    return host


def _idna(host: str, written: str) -> str:
    """UTS 46 processing as the URL standard asks for it (nontransitional, no STD3 rules): its mapping
    refuses the disallowed code points; each label is then Punycode. The `idna` package's stricter
    IDNA 2008 checks would refuse names browsers open (symbols such as U+2603, valid in UTS 46)."""
    import idna

    try:
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
        return ".".join(label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
                        for label in mapped.split("."))
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidURL(f"host {written!r} is not a valid internationalised domain name ({exc})") from None


def install() -> None:
    """Make img2dataset's downloader request each URL as `request_url` encodes it, or refuse it unfetched."""
    from img2dataset import downloader

    fetch = downloader.download_image
    if getattr(fetch, "encodes_urls", False):
        return

    def download_image(row, *args, **kwargs):
        key, url = row
        try:
            url = request_url(url) if isinstance(url, str) else url
        except InvalidURL as exc:
            return key, None, str(exc)
        return fetch((key, url), *args, **kwargs)

    download_image.encodes_urls = True
    # download_image_with_retry looks the function up in its module at each call
    downloader.download_image = download_image
