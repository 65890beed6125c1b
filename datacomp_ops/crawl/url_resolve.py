"""Relative image URLs resolved as ``urllib.parse.urljoin`` resolves them, without calling it for the common forms.

DataComp's uids are md5(alt + resolved URL), so the resolution must be urljoin's to
the character, quirks included (it drops an empty query or fragment, collapses empty
segments inside a relative path, removes dot segments). urljoin costs about half of
parsing a WAT file: it re-parses the page's URL for every link. `PageResolver` parses
the page's URL once and resolves the three forms most links take by concatenation:

- ``//host/path`` (protocol-relative): the page's scheme + the link;
- ``/path`` (absolute path): the page's scheme and host + the link;
- ``path``, ``./path``, ``../../path`` (relative path): the page's directory as urljoin
  computes it (once per page and number of leading ``..``), + the rest of the link;
- ``javascript:``, ``data:`` and any other scheme than the page's: the link itself;

but only when the link holds nothing urljoin would rewrite: ASCII without controls,
spaces, backslashes, brackets or ``;``, no dot segment, no empty query or fragment,
and for a relative path no ``:`` and no empty segment. Everything else goes to urljoin
itself. tests/test_url_resolve.py compares the two on a corpus of awkward URLs and on
random ones.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

# a page URL urlsplit would split the same way: lowercase http(s), nothing it strips or rewrites
_SIMPLE_BASE = re.compile(r"(https?)://([^/?#\[\]\\\s]+)([^?#\s\\]*)(?:[?#][^\s]*)?")
# a link with a scheme of its own (as urlsplit detects one): urljoin returns it unchanged
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):")

# characters after which urljoin's parsing leaves a link as it is (RFC 3986's unreserved,
# sub-delims minus ';', gen-delims minus '[' ']', and '%')
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/?#%]*")


def _plain_tail(url: str) -> str | None:
    """The path part of `url` if its query and fragment survive urljoin verbatim, else None."""
    if not _PLAIN.fullmatch(url):
        return None
    path, hash_, fragment = url.partition("#")
    if hash_ and not fragment:
        return None
    path, mark, query = path.partition("?")
    if mark and not query:
        return None
    return path


class PageResolver:
    """Resolves the links of one page (its URL, or its ``<base href>`` resolved) as urljoin would."""

    __slots__ = ("base", "origin", "scheme", "path", "directories")

    def __init__(self, base: str):
        self.base = base
        self.origin = self.scheme = None
        self.directories: dict[int, str] = {}
        if not base.isascii():
            return
        simple = _SIMPLE_BASE.fullmatch(base)
        if simple:
            scheme, netloc, path = simple.groups()
        else:
            try:
                parts = urlsplit(base)
            except ValueError:
                return
            scheme, netloc, path = parts.scheme, parts.netloc, parts.path
        if scheme not in ("http", "https") or not netloc:
            return
        self.scheme = scheme
        self.origin = f"{scheme}://{netloc}"
        # the path as urlparse gives it: without the last segment's ;params
        cut = path.find(";", path.rfind("/")) if "/" in path else path.find(";")
        self.path = path if cut < 0 else path[:cut]

    def _directory(self, ups: int) -> str:
        """urljoin's directory for a link that starts with `ups` times ``../``: its own steps (it drops the
        page's last segment, collapses empty segments, resolves dot segments, stops at the root)."""
        directory = self.directories.get(ups)
        if directory is None:
            segments = self.path.split("/")
            if segments[-1] != "":
                del segments[-1]
            segments += [".."] * ups + ["x"]
            segments[1:-1] = filter(None, segments[1:-1])
            resolved: list[str] = []
            for seg in segments:
                if seg == "..":
                    if resolved:
                        resolved.pop()
                elif seg != ".":
                    resolved.append(seg)
            path = "/".join(resolved) or "/"
            directory = self.directories[ups] = self.origin + ("" if path[0] == "/" else "/") + path[:-1]
        return directory

    def resolve(self, url: str) -> str:
        """What ``urljoin(base, url)`` returns, for a `url` that is not already absolute http(s)."""
        if self.origin is not None:
            scheme = _SCHEME.match(url)
            if scheme and scheme.group(1).lower() not in ("http", "https"):
                return url  # javascript:, data:, mailto: ... urljoin keeps a scheme other than the page's
            if url.startswith("//"):
                path = _plain_tail(url)
                # a host (urljoin takes the page's for "///path") and a path after it
                if path is not None and "/." not in path and path[2:3] not in ("", "/") and "/" in path[2:]:
                    return f"{self.scheme}:{url}"
            elif url.startswith("/"):
                path = _plain_tail(url)
                if path is not None and "/." not in path:
                    return self.origin + url
            elif url:
                rest, ups = url, 0
                while rest.startswith(("./", "../")):
                    if rest[1] == ".":
                        rest, ups = rest[3:], ups + 1
                    else:
                        rest = rest[2:]
                path = _plain_tail(rest) if rest and rest[0] not in "./?#" else None
                if path and ":" not in path and "/." not in path and "//" not in path:
                    return self._directory(ups) + rest
        return urljoin(self.base, url)
