"""A crawl is untrusted input: the download never reaches loopback, private or metadata addresses."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from datacomp_ops import ledger
from datacomp_ops.address_guard import AddressPolicy, BlockedAddressError, classify, parse_allowance
from datacomp_ops.config import ConfigError, load_config
from datacomp_ops.download import Partition, classify_failure, run_download
from datacomp_ops.layout import PoolLayout
from datacomp_ops.synthetic.crawl import _envelope, _record
from datacomp_ops.synthetic.images import encode, render_shape
from datacomp_ops.wat import parse_wat_file


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
            def do_GET(self):  # noqa: N802
                trap.hits.append(self.path)
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
    from datacomp_ops.address_guard import storage_endpoint_allowances

    allowed = storage_endpoint_allowances("http://localhost:9000")
    assert "127.0.0.1:9000" in allowed
    AddressPolicy(allowed).check("localhost", 9000, ["127.0.0.1"])
    with pytest.raises(BlockedAddressError):
        AddressPolicy(allowed).check("localhost", 9001, ["127.0.0.1"])
    assert storage_endpoint_allowances(None) == storage_endpoint_allowances("") == []
