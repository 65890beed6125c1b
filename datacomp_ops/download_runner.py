"""img2dataset in a process of its own, every connection guarded (datacomp_ops.address_guard).

Run as ``python -m datacomp_ops.download_runner KWARGS_JSON``. The guard is installed at
this module's top level, before img2dataset starts its download processes, which fork
from this one and so inherit it (were they spawned, they would run this top level again
as ``__mp_main__`` and install it themselves). The allowed addresses come in
``DATACOMP_ALLOWED_PRIVATE_ADDRESSES`` (a JSON list), which the children inherit; the S3 endpoint
the shards are written to (AWS_ENDPOINT_URL, e.g. MinIO on the cluster's network) is allowed too.
"""

import json
import os
import sys

from datacomp_ops import address_guard

address_guard.install(json.loads(os.environ.get(address_guard.ALLOWED_ENV) or "[]")
                      + address_guard.storage_endpoint_allowances(os.environ.get("AWS_ENDPOINT_URL")))

if __name__ == "__main__":
    import multiprocessing

    # img2dataset's CLI would start up inside a task and install signal handlers: call the function
    from img2dataset import distributor, download

    # img2dataset asks multiprocessing for "spawn": each download process (and each replacement after
    # maxtasksperchild) would import img2dataset, webdataset's torch and OpenCV again, ~3 s of a
    # 10,000-URL partition's ~20 s on 2 cores. Forked, they start with this process's imports and guard.
    distributor.get_context = lambda method=None: multiprocessing.get_context("fork")
    download(**json.loads(sys.argv[1]))
