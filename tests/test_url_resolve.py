"""The fast paths of URL resolution give exactly what urljoin gives (DataComp's uids hash the resolved URL)."""

import random
from urllib.parse import urljoin

import pytest

from datacomp_ops.crawl.url_resolve import PageResolver

BASES = [
    "http://example.com/a/b/page.html", "https://example.com/a/b/", "http://example.com", "http://example.com/",
    "HTTPS://Example.COM/Dir/page?q=1#frag", "http://example.com/a//b/page", "http://example.com/a/../b/./c",
    "http://user:pw@example.com:8080/x/y", "http://[2001:db8::1]/a/b", "http://[2001:db8::1]:8080/",
    "http://example.com/a;p/b;q", "http://example.com/a/..", "http://example.com/%7Euser/", "http://xn--bcher-kva.de/a/",
    "http://bücher.de/a/", "http://example.com/a b/c", "http://example.com/a/b?", "ftp://example.com/a/",
]
LINKS = [
    "img.jpg", "img/a.jpg", "./img.jpg", "../img.jpg", "../../../../x.jpg", ".", "..", "./", "../", ".hidden.jpg",
    "a/./b.jpg", "a/../b.jpg", "a//b.jpg", "a/b/", "/img.jpg", "/a/b/../c.jpg", "/a/./b.jpg", "/a//b.jpg", "/",
    "//cdn.example.org/img.jpg", "//cdn.example.org", "//cdn.example.org?x=1", "//cdn.example.org:8443/a/../b.jpg",
    "//[::1]/x.jpg", "//user@cdn.org/x.jpg", "img.jpg?v=2", "img.jpg?", "img.jpg#", "img.jpg#top", "img.jpg?#",
    "img.jpg?a=1#b", "/img.jpg?", "/img.jpg#x", "?q=2", "#frag", "img.jpg;params", "/a;p/b.jpg", "a b.jpg",
    "a%20b.jpg", "\\img.jpg", "/a\\b.jpg", "img\t.jpg", "img\n.jpg", " img.jpg", "bild-ä.jpg", "/ünïcode.jpg",
    "//bücher.de/x.jpg", "data:image/png;base64,AAAA", "javascript:void(0)", "mailto:a@b.c", "http:img.jpg",
    "https:/img.jpg", "HTTP://EXAMPLE.COM/X.JPG", "a:b.jpg", "/a:b.jpg", "//h/a:b.jpg", "~user/x.jpg",
    "ftp:x.jpg", "FTP://h/x.jpg", "javascript:alert(1)", "Data:,x", "1http:x", "h+t.tp:x", "java\tscript:x",
    "img.jpg?x=/../y", "img.jpg#/./z", "%2e%2e/x.jpg", "/%2e/x.jpg", "a/b/c/d/e/f.jpg", "", "//", "///x.jpg",
]


def _ours(base: str, link: str) -> str:
    return PageResolver(base).resolve(link)


@pytest.mark.parametrize("base", BASES)
def test_awkward_links_resolve_as_urljoin_resolves_them(base):
    for link in LINKS:
        try:
            want = urljoin(base, link)
        except ValueError:
            with pytest.raises(ValueError):
                _ours(base, link)
            continue
        assert _ours(base, link) == want, (base, link)


def test_random_links_resolve_as_urljoin_resolves_them():
    """200,000 random links over an alphabet of every character urljoin treats specially."""
    rng = random.Random(0)
    alphabet = list("abcXYZ019") + list("/./../?#;:@%[]\\ \t\n&=+~!$'()*,-_") + ["ä", "ü", "\u3000", "//", ".."]
    base_alphabet = list("ab/./..;?#%") + ["//", "/../", "/./"]
    for i in range(200_000):
        base = rng.choice(BASES)
        if rng.random() < 0.3:  # a page path of its own
            base = rng.choice(["http://h", "https://h.org:81"]) + "/" + "".join(
                rng.choice(base_alphabet) for _ in range(rng.randint(0, 10)))
        link = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.3:
            link = rng.choice(["/", "//h", "./", "../", ""]) + link
        try:
            want = urljoin(base, link)
        except ValueError:
            continue
        assert _ours(base, link) == want, (base, link)


def test_most_links_take_a_fast_path():
    """The forms links usually take do not call urljoin (the point of the module)."""
    import datacomp_ops.crawl.url_resolve as module

    calls = []
    real = module.urljoin
    module.urljoin = lambda *a: calls.append(a) or real(*a)
    try:
        page = PageResolver("https://example.com/blog/2024/post.html")
        calls.clear()
        for link in ("/img/a.jpg", "//cdn.example.com/b.png?w=640", "images/c.jpg", "d.webp#x", "/e.jpg?v=3",
                     "./f.jpg", "g/h.png"):
            page.resolve(link)
    finally:
        module.urljoin = real
    assert calls == []

