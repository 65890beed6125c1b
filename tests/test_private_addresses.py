"""A crawl is untrusted input: the download never reaches loopback, private or metadata addresses."""

import http.client
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest

from datacomp_ops.core import ledger
from datacomp_ops.core.address_guard import (
    AddressPolicy,
    BlockedAddressError,
    GuardedProxyHandler,
    classify,
    endpoint_allowances,
    parse_allowance,
)
from datacomp_ops.core.config import ConfigError, load_config
from datacomp_ops.core.layout import PoolLayout
from datacomp_ops.crawl.wat import parse_wat_file
from datacomp_ops.download.partition import Partition, classify_failure, run_download
from datacomp_ops.embedded.images import encode, render_shape
from datacomp_ops.synthetic.crawl import _envelope, _record


@pytest.mark.parametrize("address, status", [
    ("127.0.0.1", "blocked_loopback"), ("127.8.9.10", "blocked_loopback"), ("::1", "blocked_loopback"),
    ("0.0.0.0", "blocked_loopback"), ("::", "blocked_loopback"),
    ("10.1.2.3", "blocked_private"), ("172.16.0.1", "blocked_private"), ("172.31.255.255", "blocked_private"),
    ("192.168.1.1", "blocked_private"), ("fc00::1", "blocked_private"), ("fd12:3456::1", "blocked_private"),
    ("100.64.0.1", "blocked_private"),
    ("169.254.1.1", "blocked_link_local"), ("fe80::1%eth0", "blocked_link_local"),
    ("169.254.169.254", "blocked_metadata_service"), ("fd00:ec2::254", "blocked_metadata_service"),
    ("100.100.100.200", "blocked_metadata_service"),
    ("::ffff:127.0.0.1", "blocked_loopback"), ("::ffff:169.254.169.254", "blocked_metadata_service"),
    ("64:ff9b::a00:1", "blocked_private"), ("2002:c0a8:101::1", "blocked_private"),
    ("224.0.0.1", "blocked_reserved"), ("240.0.0.1", "blocked_reserved"), ("192.0.2.7", "blocked_reserved"),
    ("8.8.8.8", None), ("172.32.0.1", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None),
])
def test_address_classes(address, status):
    assert classify(address) == status


# Every IPv6 form that carries an IPv4 address, judged by that address (a NAT64 gateway, a 6to4 or
# Teredo relay, or the host's own kernel would deliver it there); the public ones stay public.
@pytest.mark.parametrize("address, status", [
    # IPv4-compatible, deprecated (RFC 4291): ::a.b.c.d; :: and ::1 stay IPv6's own
    ("::127.0.0.1", "blocked_loopback"), ("::7f00:1", "blocked_loopback"), ("::10.0.0.1", "blocked_private"),
    ("::169.254.169.254", "blocked_metadata_service"), ("::8.8.8.8", None),
    ("::", "blocked_loopback"), ("::1", "blocked_loopback"),
    # IPv4-translated (RFC 2765): ::ffff:0:a.b.c.d
    ("::ffff:0:127.0.0.1", "blocked_loopback"), ("::ffff:0:192.168.1.1", "blocked_private"),
    ("::ffff:0:a9fe:a9fe", "blocked_metadata_service"), ("::ffff:0:8.8.8.8", None),
    # NAT64 well-known prefix (RFC 6052): 64:ff9b::a.b.c.d
    ("64:ff9b::127.0.0.1", "blocked_loopback"), ("64:ff9b::169.254.169.254", "blocked_metadata_service"),
    ("64:ff9b::8.8.8.8", None),
    # NAT64 local-use prefix (RFC 8215), the IPv4 address in the last 32 bits (a /96 inside it) ...
    ("64:ff9b:1::127.0.0.1", "blocked_loopback"), ("64:ff9b:1::10.0.0.1", "blocked_private"),
    ("64:ff9b:1:ffff:ffff:ffff:a9fe:a9fe", "blocked_metadata_service"), ("64:ff9b:1::8.8.8.8", None),
    # ... or after the /48 itself (bits 48-63 and 72-87, RFC 6052's layout): 10.0.0.1, 169.254.169.254, 8.8.8.8
    ("64:ff9b:1:a00:0:100::", "blocked_private"), ("64:ff9b:1:a9fe:a9:fe00::", "blocked_metadata_service"),
    ("64:ff9b:1:808:8:800::", None),
    # 6to4 (RFC 3056): 2002:a.b.c.d::/48
    ("2002:7f00:1::1", "blocked_loopback"), ("2002:a9fe:a9fe::1", "blocked_metadata_service"),
    ("2002:808:808::1", None),
    # Teredo (RFC 4380): server in bits 32-63, client inverted in the last 32; both judged
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "blocked_loopback"),  # client 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:5601:5601", "blocked_metadata_service"),  # client 169.254.169.254
    ("2001:0:a00:1:8000:63bf:f7f7:f7f7", "blocked_private"),  # server 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),  # server 65.54.227.120, client 8.8.8.8
    # IPv4-mapped (::ffff:a.b.c.d)
    ("::ffff:10.0.0.1", "blocked_private"), ("::ffff:0a00:0001", "blocked_private"),
])
def test_ipv6_forms_carrying_an_ipv4_address_are_judged_by_it(address, status):
    assert classify(address) == status


def test_an_allowance_admits_its_address_in_any_ipv6_form():
    policy = AddressPolicy(["127.0.0.1:8765"])
    for form in ("::127.0.0.1", "::ffff:0:127.0.0.1", "64:ff9b::127.0.0.1", "2002:7f00:1::1"):
        policy.check("h", 8765, [form])
    with pytest.raises(BlockedAddressError, match=r"^blocked_loopback: 64:ff9b:1::7f00:1 \(host 'h'\) "
                                                  r"\(carrying 127.0.0.1\)"):
        policy.check("h", 8766, ["64:ff9b:1::127.0.0.1"])


def test_allowances_are_networks_or_one_address_and_port():
    policy = AddressPolicy(["127.0.0.1:8765", "10.0.0.0/8", "[::1]:9000"])
    policy.check("h", 8765, ["127.0.0.1"])
    policy.check("h", "8765", ["::ffff:127.0.0.1"])
    policy.check("h", 80, ["10.200.0.1"])
    policy.check("h", 9000, ["::1"])
    with pytest.raises(BlockedAddressError, match=r"^blocked_loopback: 127.0.0.1 \(host 'h'\)"):
        policy.check("h", 8766, ["127.0.0.1"])
    # one blocked address among a name's answers refuses the name
    with pytest.raises(BlockedAddressError, match="blocked_private"):
        policy.check("mixed", 443, ["93.184.216.34", "192.168.0.10"])
    for bad in ("127.0.0.1:99999", "not-a-network", "10.0.0.0/40", "[::1]:x"):
        with pytest.raises(ValueError, match="is not a network|out of range"):
            parse_allowance(bad)
    with pytest.raises(ConfigError, match="download.allowed_private_addresses"):
        load_config(overrides={"download.allowed_private_addresses": ["localhost"]})


def test_the_default_allows_nothing_private():
    assert load_config(path="/dev/null").download.allowed_private_addresses == []


def test_guard_refusals_become_ledger_statuses():
    message = "<urlopen error blocked_metadata_service: 169.254.169.254 is a metadata service address; ...>"
    assert classify_failure(message, "failed_to_download") == "blocked_metadata_service"
    assert {"blocked_loopback", "blocked_private", "blocked_link_local", "blocked_metadata_service",
            "blocked_reserved"} <= set(ledger.PERMANENT_FAILURES)


class _Trap(ThreadingHTTPServer):
    """A service of the cluster's own that a crawl must not reach: it counts every request, and would
    answer with a good image, so a URL that reached it would show up as downloaded."""

    daemon_threads = True

    def __init__(self):
        self.hits: list[str] = []
        trap = self

        class Handler(BaseHTTPRequestHandler):
            def do_CONNECT(self):  # noqa: N802 - as a proxy, the tunnel an https URL asks for
                trap.hits.append(f"CONNECT {self.path}")
                self.send_error(502)

            def do_GET(self):  # noqa: N802
                trap.hits.append(self.path)  # as a proxy, the absolute URL it was asked to fetch
                body = encode(render_shape("red", "circle", 1))
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.mark.slow
def test_a_crawl_of_private_addresses_downloads_none_of_them(tmp_path, image_server):
    trap = _Trap()
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    q = trap.server_address[1]
    p = image_server.server_address[1]
    img = "img/shape/red/circle/1.jpg"
    expected = {
        # the image server itself is the one address the config allows: these download
        f"http://127.0.0.1:{p}/{img}": "downloaded",
        f"http://[::ffff:127.0.0.1]:{p}/{img}": "downloaded",
        # the trap on loopback, spelled every way a resolver accepts
        f"http://127.0.0.1:{q}/{img}": "blocked_loopback",
        f"http://2130706433:{q}/{img}": "blocked_loopback",  # decimal
        f"http://0177.0.0.1:{q}/{img}": "blocked_loopback",  # octal
        f"http://0x7f.0.0.1:{q}/{img}": "blocked_loopback",  # hexadecimal
        f"http://127.1:{q}/{img}": "blocked_loopback",  # short form
        f"http://[::ffff:127.0.0.1]:{q}/{img}": "blocked_loopback",  # IPv6-mapped
        f"http://[::ffff:7f00:1]:{q}/{img}": "blocked_loopback",
        f"http://localhost:{q}/{img}": "blocked_loopback",  # a hostname resolving there
        f"http://0.0.0.0:{q}/{img}": "blocked_loopback",
        f"http://127.0.0.2:{p}/{img}": "blocked_loopback",  # the allowed port on another address
        f"http://[::1]:{q}/{img}": "blocked_loopback",
        # the allowed server redirecting to the trap
        f"http://127.0.0.1:{p}/elsewhere/127.0.0.1/{q}/{img}": "blocked_loopback",
        f"http://127.0.0.1:{p}/elsewhere/169.254.169.254/80/latest/meta-data/": "blocked_metadata_service",
        # the rest of the private space (never connected: no route is needed to refuse them)
        "http://10.0.0.1/a.jpg": "blocked_private",
        "http://172.16.5.4/a.jpg": "blocked_private",
        "http://192.168.0.1/a.jpg": "blocked_private",
        "http://3232235521/a.jpg": "blocked_private",  # 192.168.0.1 in decimal
        "http://[fd00::1]/a.jpg": "blocked_private",
        "http://169.254.169.254/latest/meta-data/iam/": "blocked_metadata_service",
        "http://[fd00:ec2::254]/latest/": "blocked_metadata_service",
        "http://169.254.10.10/a.jpg": "blocked_link_local",
        "http://[fe80::1]/a.jpg": "blocked_link_local",
        "http://224.0.0.1/a.jpg": "blocked_reserved",
    }
    links = [{"path": "IMG@/src", "url": url, "alt": f"picture {i}"} for i, url in enumerate(expected)]
    wat = tmp_path / "private.warc.wat.gz"
    wat.write_bytes(_record("http://example.com/page", _envelope("http://example.com/page", links)))
    pairs, counters = parse_wat_file(str(wat))
    assert counters["pairs"] == len(expected)
    part = tmp_path / "part-0000-00000.parquet"
    pq.write_table(pairs, part)
    config = load_config(overrides={
        "storage_root": str(tmp_path / "root"), "download.allowed_private_addresses": [f"127.0.0.1:{p}"],
        "download.timeout": 5, "download.retries": 0, "download.processes_count": 1})
    pool = PoolLayout(config.storage_root, "v1")

    stats = run_download(Partition(str(part), pairs.num_rows, 0), pool, config)

    table = ledger.read(pool.ledger)
    ledger.check_accounts_for(table, pairs["uid"].to_pylist(), "private-address crawl")
    got = dict(zip(table["url"].to_pylist(), table["status"].to_pylist()))
    assert got == expected
    assert trap.hits == [], "a crawl URL reached the trap"
    messages = dict(zip(table["url"].to_pylist(), table["message"].to_pylist()))
    assert "(host 'localhost')" in messages[f"http://localhost:{q}/{img}"]
    assert "download.allowed_private_addresses" in messages[f"http://2130706433:{q}/{img}"]
    assert stats["downloaded"] == 2 and stats["blocked_loopback"] == 12
    trap.shutdown()


def test_the_storage_endpoint_is_allowed_to_the_download_processes():
    """img2dataset writes the shards itself: MinIO on the cluster's network must stay reachable."""
    allowed = endpoint_allowances("http://localhost:9000")
    assert "127.0.0.1:9000" in allowed
    AddressPolicy(allowed).check("localhost", 9000, ["127.0.0.1"])
    with pytest.raises(BlockedAddressError):
        AddressPolicy(allowed).check("localhost", 9001, ["127.0.0.1"])
    assert endpoint_allowances(None) == endpoint_allowances("") == []


def _crawl_partition(tmp_path, urls):
    """A WAT file linking `urls`, parsed as the crawl stage parses it, as one download partition."""
    links = [{"path": "IMG@/src", "url": url, "alt": f"picture {i}"} for i, url in enumerate(urls)]
    wat = tmp_path / "crawl.warc.wat.gz"
    wat.write_bytes(_record("http://example.com/page", _envelope("http://example.com/page", links)))
    pairs, _ = parse_wat_file(str(wat))
    assert pairs.num_rows == len(urls)
    part = tmp_path / "part-0000-00000.parquet"
    pq.write_table(pairs, part)
    return Partition(str(part), pairs.num_rows, 0), pairs["uid"].to_pylist()


def _ledger_statuses(pool, uids):
    table = ledger.read(pool.ledger)
    ledger.check_accounts_for(table, uids, "proxy crawl")
    return dict(zip(table["url"].to_pylist(), table["status"].to_pylist()))


def _serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow
def test_proxies_in_the_environment_do_not_carry_the_crawl_past_the_guard(tmp_path, image_server, monkeypatch):
    """A company network's http_proxy/HTTPS_PROXY: through it the guard would see only the proxy's address
    (here one the config allows, as a public proxy would be) and the proxy would fetch the internal URLs.
    The download ignores them: it connects directly, and the guard sees each URL's own address."""
    proxy = _serve(_Trap())  # a proxy that would fetch anything, and answer with an image
    trap = _serve(_Trap())
    x, q, p = proxy.server_address[1], trap.server_address[1], image_server.server_address[1]
    for name in ("http_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{x}")
    monkeypatch.setenv("NO_PROXY", "example.com")
    img = "img/shape/red/circle/1.jpg"
    expected = {
        f"http://127.0.0.1:{p}/{img}": "downloaded",  # the allowed image server, connected directly
        f"http://127.0.0.1:{q}/{img}": "blocked_loopback",
        f"http://localhost:{q}/{img}": "blocked_loopback",
        f"http://127.0.0.1:{p}/elsewhere/127.0.0.1/{q}/{img}": "blocked_loopback",  # redirected
        "http://169.254.169.254/latest/meta-data/iam/": "blocked_metadata_service",
        "https://169.254.169.254/latest/meta-data/iam/": "blocked_metadata_service",
        "http://10.0.0.1/a.jpg": "blocked_private",
        "http://[64:ff9b:1::a9fe:a9fe]/latest/": "blocked_metadata_service",
    }
    partition, uids = _crawl_partition(tmp_path, expected)
    config = load_config(overrides={
        "storage_root": str(tmp_path / "root"),
        "download.allowed_private_addresses": [f"127.0.0.1:{p}", f"127.0.0.1:{x}"],
        "download.timeout": 5, "download.retries": 0, "download.processes_count": 1})
    pool = PoolLayout(config.storage_root, "v1")

    run_download(partition, pool, config)

    assert _ledger_statuses(pool, uids) == expected
    assert proxy.hits == [], "the environment's proxy was sent crawl URLs"
    assert trap.hits == [], "a crawl URL reached the trap"
    proxy.shutdown()
    trap.shutdown()


class _ForwardingProxy(ThreadingHTTPServer):
    """An HTTP proxy that records every URL it is asked for and fetches it (redirects are passed back to
    the client, as a proxy does); https tunnels are recorded and refused."""

    daemon_threads = True

    def __init__(self):
        self.requested: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_CONNECT(self):  # noqa: N802
                proxy.requested.append(f"CONNECT {self.path}")
                self.send_error(502)

            def do_GET(self):  # noqa: N802
                proxy.requested.append(self.path)
                url = urlsplit(self.path)
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
                conn.request("GET", url.path or "/")
                response = conn.getresponse()
                body = response.read()
                self.send_response(response.status)
                for name in ("Content-Type", "Location"):
                    if response.getheader(name):
                        self.send_header(name, response.getheader(name))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                conn.close()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.mark.slow
def test_the_configured_proxy_is_sent_only_urls_the_guard_allows(tmp_path, image_server, monkeypatch):
    """download.proxy: the proxy's own address is configuration, allowed without an allowance; each URL's
    host is judged before the proxy is sent it, so internal URLs are refused and never forwarded."""
    proxy = _serve(_ForwardingProxy())
    trap = _serve(_Trap())
    x, q, p = proxy.server_address[1], trap.server_address[1], image_server.server_address[1]
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{q}")  # the environment's: ignored
    img = "img/shape/red/circle/1.jpg"
    allowed = f"http://127.0.0.1:{p}/{img}"
    redirect = f"http://127.0.0.1:{p}/elsewhere/127.0.0.1/{q}/{img}"
    expected = {
        allowed: "downloaded",  # through the proxy
        redirect: "blocked_loopback",  # the proxy passes the 302 back; its target is judged
        f"http://127.0.0.1:{q}/{img}": "blocked_loopback",
        f"http://localhost:{q}/{img}": "blocked_loopback",
        f"http://2130706433:{q}/{img}": "blocked_loopback",
        f"http://127.0.0.1:{x}/{img}": "blocked_loopback",  # the proxy itself, named by a crawl URL
        "http://169.254.169.254/latest/meta-data/iam/": "blocked_metadata_service",
        "https://169.254.169.254/latest/meta-data/iam/": "blocked_metadata_service",  # no CONNECT either
        "http://[::ffff:0:a9fe:a9fe]/latest/": "blocked_metadata_service",
        "http://10.0.0.1/a.jpg": "blocked_private",
        "http://[fd00::1]/a.jpg": "blocked_private",
    }
    partition, uids = _crawl_partition(tmp_path, expected)
    config = load_config(overrides={
        "storage_root": str(tmp_path / "root"), "download.proxy": f"http://127.0.0.1:{x}",
        "download.allowed_private_addresses": [f"127.0.0.1:{p}"],
        "download.timeout": 5, "download.retries": 0, "download.processes_count": 1})
    pool = PoolLayout(config.storage_root, "v1")

    run_download(partition, pool, config)

    assert _ledger_statuses(pool, uids) == expected
    # the allowed host's robots.txt and tdmrep.json went through the proxy too (download/host_rules.py)
    rules = [u for u in proxy.requested if u.endswith(("/robots.txt", "/.well-known/tdmrep.json"))]
    assert sorted(set(proxy.requested) - set(rules)) == sorted([allowed, redirect]), \
        "the proxy was sent a URL the guard refuses"
    assert rules and all(u.startswith(f"http://127.0.0.1:{p}/") for u in rules), rules
    assert trap.hits == []
    proxy.shutdown()
    trap.shutdown()


def test_the_proxy_handler_judges_the_url_host_before_the_proxy_sees_it(image_server):
    """In process: an opener with the guarded proxy handler (as the runner installs it)."""
    proxy = _serve(_ForwardingProxy())
    x, p = proxy.server_address[1], image_server.server_address[1]
    opener = urllib.request.build_opener(
        GuardedProxyHandler({"http": f"http://127.0.0.1:{x}", "https": f"http://127.0.0.1:{x}"},
                            AddressPolicy([f"127.0.0.1:{p}"])))
    url = f"http://127.0.0.1:{p}/img/shape/red/circle/1.jpg"
    with opener.open(url, timeout=10) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
    refused = {
        "http://127.0.0.1:9/x": "blocked_loopback",
        "https://[::1]/x": "blocked_loopback",
        # two readings of one URL: the proxy's (host example.invalid) and urllib's (127.0.0.1): both judged
        "http://127.0.0.1:9%2f@example.invalid/x": "blocked_loopback",
        "http://169.254.169.254/latest/": "blocked_metadata_service",
    }
    for bad, status in refused.items():
        with pytest.raises(urllib.error.URLError, match=f"^<urlopen error {status}: "):
            opener.open(bad, timeout=10)
    with pytest.raises(urllib.error.URLError, match="Name or service not known|not known|resolution"):
        opener.open("http://no-such-host.invalid/x", timeout=10)  # unjudgeable: not sent on either
    assert proxy.requested == [url]
    proxy.shutdown()


@pytest.mark.parametrize("value, accepted", [
    ("", ""), ("http://proxy.example:3128", "http://proxy.example:3128"),
    ("http://user:secret@proxy.example:3128/", "http://user:secret@proxy.example:3128/"),
])
def test_download_proxy_accepts_an_http_proxy_url(value, accepted):
    assert load_config(overrides={"download.proxy": value}).download.proxy == accepted


@pytest.mark.parametrize("value", [
    "proxy.example:3128", "https://proxy.example:3128", "socks5://proxy.example:1080", "http://:3128",
    "http://proxy.example:99999", "http://user:secret@proxy.example:3128/path",
])
def test_a_bad_download_proxy_is_a_config_error_that_hides_its_password(value):
    with pytest.raises(ConfigError, match="^download.proxy: .*http://") as error:
        load_config(overrides={"download.proxy": value})
    assert "secret" not in str(error.value)


def test_onnxruntime_is_told_to_send_no_telemetry_before_it_loads():
    """onnxruntime reads ORT_DISABLE_TELEMETRY when it is imported (it sent usage events to Microsoft's
    collector through the proxy test's proxy): importing the platform sets it first, unless the operator did."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    code = "import os, datacomp_ops, onnxruntime; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    env["ORT_DISABLE_TELEMETRY"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
