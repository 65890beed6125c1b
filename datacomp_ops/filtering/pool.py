"""A pool's metadata in DataComp's format: parquet files of samples, each with its npz of features.

Sources: a published pool version (its manifest lists the metadata files of
the whole chain, versions.py), or any folder holding ``*.parquet`` and
``*.npz`` pairs, as DataComp's download writes them. A scale restricts the
pool to the uids of its subset file, as DataComp's per-scale metadata does.

Rows are read column by column with pyarrow; features key by key (an npz is
a zip: one member is read, not the others). Every check names the file.
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core import storage
from ..core.schema import SchemaError, in_subset, read_subset, uid_strings_to_array

log = logging.getLogger(__name__)

# DataComp's feature dimensions (OpenAI's B/32 and L/14); a pool made with other models says its own
DATACOMP_DIMS = {"b32_img": 512, "b32_txt": 512, "l14_img": 768, "l14_txt": 768}
_THREADS = min(8, os.cpu_count() or 1)


class PoolError(SchemaError):
    """A pool's metadata cannot be used as it is; the message names the file and the problem."""


@dataclass
class MetadataPool:
    """The metadata files of a pool, in order; row i of the pool is a row of one of them."""

    parquets: list[str]
    # restrict to these uids (a scale's subset file); None: every row
    subset: str | None = None
    # the feature dimension expected per npz key (DATACOMP_DIMS for DataComp's pools); unset keys are only
    # checked for agreement between files
    dims: dict[str, int] = field(default_factory=dict)
    _mask: np.ndarray | None = field(default=None, repr=False)
    _rows: list[int] | None = field(default=None, repr=False)
    _all_uids: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_dir(cls, url: str, subset: str | None = None) -> "MetadataPool":
        parquets = storage.ls(url, "*.parquet")
        if not parquets:
            raise PoolError(f"{url}: no metadata parquet files (DataComp's format: *.parquet with *.npz beside)")
        return cls(parquets, subset)

    @classmethod
    def from_manifest(cls, manifest_url: str, scale: str | None = None) -> "MetadataPool":
        manifest = storage.read_json(manifest_url)
        parquets = manifest.get("metadata") or []
        if not parquets:
            raise PoolError(f"{manifest_url}: the pool version lists no metadata files")
        subset = None
        if scale:
            scales = manifest.get("scales", {})
            if scale not in scales:
                raise PoolError(f"{manifest_url}: no scale {scale!r} (scales: {', '.join(scales)})")
            # a scale that holds every row of the metadata (a published pool without skipped rows) restricts nothing
            subset = None if scales[scale].get("all_rows") else scales[scale]["path"]
        return cls(parquets, subset)

    @staticmethod
    def npz_of(parquet: str) -> str:
        return parquet[: -len(".parquet")] + ".npz"

    # -- rows -------------------------------------------------------------

    def _read(self, path: str, columns: list[str]) -> pa.Table:
        try:
            with storage.open_file(path) as f:
                table = pq.read_table(f, columns=columns)
        except (OSError, pa.ArrowInvalid) as exc:
            missing = [c for c in columns if c not in self._schema_names(path)]
            if missing:
                raise PoolError(f"{path}: no column {missing[0]!r} (DataComp's metadata columns are needed)") from None
            raise PoolError(f"{path}: unreadable parquet: {exc}") from exc
        return table

    @staticmethod
    def _schema_names(path: str) -> list[str]:
        try:
            with storage.open_file(path) as f:
                return pq.read_schema(f).names
        except Exception:  # noqa: BLE001  (only used to explain a failed read)
            return []

    def row_counts(self) -> list[int]:
        """Rows of each parquet file (before the subset)."""
        if self._rows is None:
            def count(path: str) -> int:
                with storage.open_file(path) as f:
                    return pq.ParquetFile(f).metadata.num_rows
            with ThreadPoolExecutor(_THREADS) as ex:
                self._rows = list(ex.map(count, self.parquets))
        return self._rows

    def _subset_mask(self) -> np.ndarray | None:
        """Which rows belong to the scale's subset (None: all of them)."""
        if self.subset is None:
            return None
        if self._mask is None:
            wanted = read_subset(self.subset)
            uids = self.uids(restricted=False)
            self._mask = in_subset(uids, wanted)
            if self._mask.sum() != len(wanted):
                raise PoolError(f"{self.subset}: {len(wanted) - int(self._mask.sum())} of its uids are not in the "
                                f"pool's metadata")
        return self._mask

    def columns(self, names: list[str], restricted: bool = True) -> pa.Table:
        """These columns of every row (of the subset), concatenated in pool order."""
        with ThreadPoolExecutor(_THREADS) as ex:
            tables = list(ex.map(lambda p: self._read(p, names), self.parquets))
        for path, table, n in zip(self.parquets, tables, self.row_counts()):
            if table.num_rows != n:
                raise PoolError(f"{path}: {table.num_rows} rows read, its footer says {n}")
        table = pa.concat_tables(tables) if tables else pa.table({n: [] for n in names})
        mask = self._subset_mask() if restricted else None
        return table.filter(pa.array(mask)) if mask is not None else table

    def uids(self, restricted: bool = True) -> np.ndarray:
        """The pool's uids as DataComp's ``u8,u8`` pairs, in pool order (not sorted); read once (the scale's
        mask and the uid index both need them)."""
        if self._all_uids is None:
            table = self.columns(["uid"], restricted=False)
            self._all_uids = uid_strings_to_array(table["uid"], where=self._where_uid(table))
        arr = self._all_uids
        mask = self._subset_mask() if restricted else None
        return arr[mask] if mask is not None else arr

    def _where_uid(self, table: pa.Table) -> str:
        return f"uid column of {len(self.parquets)} metadata files ({self.parquets[0]}...)"

    def __len__(self) -> int:
        mask = self._subset_mask()
        return int(mask.sum()) if mask is not None else sum(self.row_counts())

    # -- features ----------------------------------------------------------

    def features(self, key: str, dtype=np.float32, restricted: bool = True) -> np.ndarray:
        """The npz member `key` of every file, stacked in pool order; shapes checked against the rows."""
        dim = self.dims.get(key)

        def load(args: tuple[str, int]) -> np.ndarray:
            parquet, rows = args
            path = self.npz_of(parquet)
            if not storage.exists(path):
                raise PoolError(f"{path}: missing; every metadata parquet needs its npz of features beside it")
            with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as npz:
                if key not in npz.files:
                    raise PoolError(f"{path}: no {key!r} array (it holds {', '.join(npz.files)})")
                arr = npz[key]
            if arr.ndim != 2 or arr.shape[0] != rows:
                raise PoolError(f"{path}: {key} has shape {arr.shape}, expected ({rows}, d) for the "
                                f"{rows} rows of {parquet}")
            if dim is not None and arr.shape[1] != dim:
                raise PoolError(f"{path}: {key} features have dimension {arr.shape[1]}, expected {dim}")
            return arr.astype(dtype, copy=False)

        with ThreadPoolExecutor(_THREADS) as ex:
            parts = list(ex.map(load, zip(self.parquets, self.row_counts())))
        dims = {p.shape[1] for p in parts}
        if len(dims) > 1:
            raise PoolError(f"{key}: the npz files disagree on the feature dimension ({sorted(dims)})")
        out = np.concatenate(parts) if parts else np.zeros((0, dim or 0), dtype)
        mask = self._subset_mask() if restricted else None
        return out[mask] if mask is not None else out


def bool_mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A pyarrow boolean column as numpy, nulls as False."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def pool_key(pool: MetadataPool) -> str:
    """Names a pool's rows: its files, their row counts and its subset; an index built for other rows is stale."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([pool.parquets, pool.row_counts(), pool.subset]).encode()).hexdigest()


class UidIndex:
    """A pool's uids sorted, and the order that sorts the pool's rows, built once per pool and kept beside
    its subsets (``_index/``): each baseline then writes its sorted subset with one gather, no sort."""

    def __init__(self, sorted_uids: np.ndarray, order: np.ndarray):
        self.sorted, self.order = sorted_uids, order
        self._uids: np.ndarray | None = None

    @property
    def uids(self) -> np.ndarray:
        """The uids in pool order."""
        if self._uids is None:
            self._uids = np.empty_like(self.sorted)
            self._uids[self.order] = self.sorted
        return self._uids

    @classmethod
    def load_or_build(cls, pool: MetadataPool, folder: str | None) -> "UidIndex":
        key = pool_key(pool)
        if folder:
            meta = storage.join(folder, "meta.json")
            if storage.exists(meta) and storage.read_json(meta).get("key") == key:
                return cls(_load_array(storage.join(folder, "sorted.npy")),
                           _load_array(storage.join(folder, "order.npy")))
        uids = pool.uids()
        order = np.lexsort((uids["f1"], uids["f0"])) if len(uids) > 1 else np.arange(len(uids))
        index = cls(uids[order], order)
        index._uids = uids
        from ..core.schema import _check_sorted_unique

        _check_sorted_unique(index.sorted, f"the pool's uids ({pool.parquets[0]}...)")
        if folder:
            for name, arr in (("sorted.npy", index.sorted), ("order.npy", order)):
                buf = io.BytesIO()
                np.save(buf, arr)
                storage.write_bytes(storage.join(folder, name), buf.getvalue())
            storage.write_json(storage.join(folder, "meta.json"), {"key": key, "rows": len(uids)})
        return index

    def sorted_subset(self, mask: np.ndarray) -> np.ndarray:
        """The uids of the rows in `mask`, sorted (a DataComp subset array)."""
        return self.sorted[mask[self.order]]


def load_row_flags(folder: str | None, name: str, pool: MetadataPool, what: str) -> np.ndarray | None:
    """A per-row array kept beside a pool's uid index (``{name}.npy``), if it was built for these rows and `what`."""
    if not folder:
        return None
    meta = storage.join(folder, f"{name}.json")
    if storage.exists(meta) and storage.read_json(meta) == {"key": pool_key(pool), "what": what}:
        return _load_array(storage.join(folder, f"{name}.npy"))
    return None


def save_row_flags(folder: str, name: str, pool: MetadataPool, what: str, values: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, values)
    storage.write_bytes(storage.join(folder, f"{name}.npy"), buf.getvalue())
    storage.write_json(storage.join(folder, f"{name}.json"), {"key": pool_key(pool), "what": what})


def _load_array(url: str) -> np.ndarray:
    """An npy file: memory-mapped when local (pages are read as they are used), else read whole."""
    fs, path = storage.get_fs(url)
    if fs.protocol == ("file", "local") or fs.protocol in ("file", "local"):
        return np.load(path, mmap_mode="r")
    return np.load(io.BytesIO(storage.read_bytes(url)))
