"""Published pools imported again on a schedule, each as its own settings say.

A published pool decays: links die, hosts fail for a while and come back. Each published version
records how the pool was imported (`import_settings`: its metadata folder, scale, files, npz, subset
file, download mode and subsets, sha256 rule); a refresh (the `refresh_published` DAG, weekly, or
`datacomp refresh-published`) runs `import_published` again with them for every published pool under
the storage root: new metadata files in the folder are imported, the URLs whose download failed
transiently and have attempts left are fetched again (a pool downloaded by subsets keeps to the union
of the same baselines), and the new version's decay report adds one more point to the pool's history.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

from ..core import storage, versions
from ..core.config import PlatformConfig
from ..core.layout import PoolLayout, dataset_root, datasets_dir
from .byod import DatasetImportError

log = logging.getLogger(__name__)

# the import_published form's fields a refresh repeats (its pool_version is the next one)
FIELDS = ("metadata", "scale", "shards", "npz", "subset", "download", "download_only", "hash_mismatch")


def import_settings(source: dict[str, Any], config: PlatformConfig) -> dict[str, Any]:
    """What a published version records of its import: the form's fields, as the run took them."""
    return {key: source[key] for key in FIELDS if key in source} | {
        "hash_mismatch": config.download.hash_mismatch}


def _newest_manifest(storage_root: str, name: str) -> dict[str, Any]:
    root = dataset_root(storage_root, name)
    version = versions.latest(root)
    return storage.read_json(PoolLayout(root, version).manifest) if version else {}


def refreshes(root: str, names: list[str] | None = None) -> list[dict[str, Any]]:
    """The import_published conf of each published pool under the storage root `root` to refresh: the named ones (each must be a published
    pool with recorded settings), or every published pool under the storage root (one published before
    versions recorded their settings is logged and left out)."""
    found = sorted(posixpath.basename(p.rstrip("/")) for p in storage.ls(datasets_dir(root), "*"))
    out = []
    for name in names or found:
        manifest = _newest_manifest(root, name) if name in found else {}
        if manifest.get("kind") == "published" and "import" in manifest:
            out.append({"name": name} | manifest["import"])
            continue
        why = (f"pool {name}: no published version of a published pool with recorded import settings under "
               f"{datasets_dir(root)}; import it with import_published once more")
        if names:
            raise DatasetImportError(why)
        if manifest.get("kind") == "published":
            log.info("%s", why)
    return out
