"""img2dataset in a process of its own, every connection guarded (datacomp_ops.address_guard).

Run as ``python -m datacomp_ops.download_runner KWARGS_JSON``: img2dataset starts its
download processes with multiprocessing's "spawn", and a spawned child runs the main
module's top level again (as ``__mp_main__``), so the guard installed below is in
every process that downloads, not only in this one. The allowed addresses come in
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
    # img2dataset's CLI would start up inside a task and install signal handlers: call the function
    from img2dataset import download

    download(**json.loads(sys.argv[1]))
