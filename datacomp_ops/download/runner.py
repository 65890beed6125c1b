"""img2dataset in a process of its own, every connection guarded (datacomp_ops.core.address_guard),
every host asked first and paced (host_rules.py, polite_fetch.py).

Run as ``python -m datacomp_ops.download.runner JOB_JSON PARENT_PID``: JOB is ``{"img2dataset": its
kwargs, "polite": settings}``. The partition's URLs are screened by their hosts' robots.txt and TDMRep
first (those decided without a request are written to ``polite["decisions"]``,
what the screening cost to ``polite["report"]``), the others downloaded from ``polite["urls"]``, hosts
interleaved, through per-host gates. The guard is installed at
this module's top level, before img2dataset starts its download processes, which fork
from this one and so inherit it (were they spawned, they would run this top level again
as ``__mp_main__`` and install it themselves). The allowed addresses come in
``DATACOMP_ALLOWED_PRIVATE_ADDRESSES`` (a JSON list), which the children inherit; the S3 endpoint
the shards are written to (AWS_ENDPOINT_URL, e.g. MinIO on the cluster's network) is allowed too.
The one proxy is download.proxy (``DATACOMP_DOWNLOAD_PROXY_URL``); the environment's are dropped.
"""

import json
import logging
import os
import signal
import sys

from ..core import address_guard

# Through a proxy the guard would see only the proxy's address, and the proxy would fetch the
# crawl's internal URLs for us: proxies from the environment (a company network's http_proxy,
# HTTPS_PROXY, no_proxy, ...) are dropped, for urllib and for every other client of this process
# and its children (the S3 writes too: they connect directly). download.proxy is the only one, and
# urllib judges each URL's host before handing the request to it (address_guard.install).
_dropped = address_guard.drop_proxy_variables(os.environ)
_proxy = os.environ.get(address_guard.PROXY_ENV, "")
if _dropped:
    logging.getLogger("datacomp_ops.download.partition").warning(
        "the download ignores the proxy settings of its environment (%s) so that the address guard sees "
        "each URL's own host; %s", ", ".join(_dropped),
        "it uses download.proxy" if _proxy else "set download.proxy to download through a proxy")
address_guard.install(json.loads(os.environ.get(address_guard.ALLOWED_ENV) or "[]")
                      + address_guard.endpoint_allowances(os.environ.get("AWS_ENDPOINT_URL")), proxy=_proxy,
                      pinned=json.loads(os.environ.get(address_guard.HOSTS_ENV) or "[]"))


# Started by partition.py with its own pid as PARENT_PID, the runner dies with that parent and takes its
# download processes along.


def _kill_group(signum=None, frame=None) -> None:
    """Kill this process group, the runner and every download process forked from it, when the runner leads it."""
    if os.getpgrp() == os.getpid():  # started in a session of its own (download.py); never a shell's group
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(128 + (signum or signal.SIGKILL))


def _default_signals() -> None:
    # a forked download process must not kill the group on the SIGTERM multiprocessing ends it with
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _die_with_parent(parent: int | None) -> None:
    """Take the whole group down when the process that started the runner dies or asks it to stop.

    Linux sends the runner SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG: kill -9 of the
    parent included); the handler then kills the group. The download processes forked later lose
    that setting at fork, which is why the group is killed rather than the runner alone.
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _kill_group)
    os.register_at_fork(after_in_child=_default_signals)
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent still kills the group when it is interrupted
        pass
    if parent is not None and os.getppid() != parent:  # it died before the signal was asked for
        _kill_group()


class _WithoutTorch:
    """A meta-path finder that makes ``import torch`` fail in the runner. img2dataset needs no torch, and
    webdataset imports it only to subclass torch's dataset classes where it is installed (it falls back
    without): that import was 1.2 s of each partition's ~2.7 s start, the platform's whole overhead over
    one img2dataset call on a 10,000-URL partition (benchmarks/bench_download.py)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (the download runner runs without torch)", name=name)
        return None


def _screen(url_list: str, polite: dict):
    """The partition's URLs screened by their hosts' rules; the decisions and the report written for
    partition.py, the URLs to download written where img2dataset reads them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..core import storage
    from . import host_rules

    with storage.open_file(url_list) as f:
        table = pq.read_table(f)
    screened = host_rules.screen(table, polite)
    decided = pa.table({k: pa.array([d[i] for d in screened.decided], pa.string())
                        for i, k in enumerate(("uid", "url", "status", "message"))})
    with storage.atomic_write(polite["decisions"]) as f:
        pq.write_table(decided, f)
    storage.write_json(polite["report"], screened.report)
    if screened.todo.num_rows:
        with storage.atomic_write(polite["urls"]) as f:
            pq.write_table(screened.todo, f)
    return screened


if __name__ == "__main__":
    import multiprocessing

    sys.meta_path.insert(0, _WithoutTorch())
    _die_with_parent(int(sys.argv[2]) if len(sys.argv) > 2 else None)
    # img2dataset's CLI would start up inside a task and install signal handlers: call the function
    from img2dataset import distributor, download

    # img2dataset asks multiprocessing for "spawn": each download process (and each replacement after
    # maxtasksperchild) would import img2dataset, webdataset's torch and OpenCV again, ~3 s of a
    # 10,000-URL partition's ~20 s on 2 cores. Forked, they start with this process's imports and guard.
    distributor.get_context = lambda method=None: multiprocessing.get_context("fork")
    # URLs requested as browsers encode them, deep and rotated images published as seen (the modules say why)
    from . import image_decode, polite_fetch, url_fetch

    image_decode.install()
    job = json.loads(sys.argv[1])
    kwargs, polite = job["img2dataset"], job["polite"]
    screened = _screen(kwargs["url_list"], polite)
    if not screened.todo.num_rows:
        sys.exit(0)  # every URL decided by its host's rules: nothing to download
    kwargs["url_list"] = polite["urls"]
    # before img2dataset forks its processes: the gates live in memory they share
    polite_fetch.install(screened, polite)
    url_fetch.install()  # over polite_fetch's fetch: the URL is encoded before its host is asked
    download(**kwargs)
