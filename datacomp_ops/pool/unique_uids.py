"""No uid twice in a pool, checked in bounded memory.

A pool's uids are md5 digests, so their top bits are uniform. When the uids to check need more memory
than the check may hold, they are spilled to local files by their top bits (20 bytes a uid: the uid and
the number of the file it came from), and each bucket is checked alone: under the default 2 GB
(extract.uid_check_memory_mb), a medium pool's 128M uids in 4 buckets, large's 1.28B in 64, xlarge's
12.8B in 512 (256 GB of local disk while the check runs). Below that, everything stays in memory in one bucket.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from ..core.schema import UID_DTYPE

ENTRY = np.dtype([("f0", "<u8"), ("f1", "<u8"), ("source", "<i4")])
# an entry, its copy in sorted order and lexsort's int64 index, with room for numpy's temporaries
BYTES_IN_MEMORY = 64


@dataclass(frozen=True)
class Repeat:
    uid: str
    first: str  # the source of its first entry, in the order they were added
    second: str


class UidCheck:
    """uids added with the name of where they come from; `first_repeat` finds a uid added twice."""

    def __init__(self, expected: int, memory_bytes: int):
        need = max(1.0, expected * BYTES_IN_MEMORY / max(1, memory_bytes))
        self.bits = math.ceil(math.log2(need))
        self.sources: list[str] = []
        self._held: list[np.ndarray] = []
        self._dir = tempfile.TemporaryDirectory(prefix="uid-check-") if self.bits else None

    @property
    def buckets(self) -> int:
        return 1 << self.bits

    def _path(self, bucket: int) -> str:
        return os.path.join(self._dir.name, f"{bucket:05d}.bin")

    def add(self, source: str, uids: np.ndarray) -> None:
        if uids.dtype != UID_DTYPE:
            raise TypeError(f"uids of {source}: {uids.dtype}, not {UID_DTYPE}")
        entries = np.empty(len(uids), ENTRY)
        entries["f0"], entries["f1"], entries["source"] = uids["f0"], uids["f1"], len(self.sources)
        self.sources.append(source)
        if not self.bits:
            self._held.append(entries)
            return
        bucket = (entries["f0"] >> np.uint64(64 - self.bits)).astype(np.int64)
        order = np.argsort(bucket, kind="stable")
        ends = np.cumsum(np.bincount(bucket, minlength=self.buckets))
        entries = entries[order]
        for b in np.flatnonzero(np.diff(ends, prepend=0)):
            with open(self._path(int(b)), "ab") as f:
                entries[(ends[b - 1] if b else 0): ends[b]].tofile(f)

    def _bucket(self, b: int) -> np.ndarray:
        if not self.bits:
            return np.concatenate(self._held) if self._held else np.zeros(0, ENTRY)
        path = self._path(b)
        return np.fromfile(path, ENTRY) if os.path.exists(path) else np.zeros(0, ENTRY)

    def first_repeat(self) -> Repeat | None:
        """A uid added twice (the first found), or None: one bucket in memory at a time."""
        for b in range(self.buckets):
            entries = self._bucket(b)
            if len(entries) < 2:
                continue
            # stable: a uid's entries stay in the order they were added
            entries = entries[np.lexsort((entries["f1"], entries["f0"]))]
            same = (entries["f0"][1:] == entries["f0"][:-1]) & (entries["f1"][1:] == entries["f1"][:-1])
            if same.any():
                i = int(np.argmax(same))
                first, second = entries[i], entries[i + 1]
                return Repeat(f"{int(first['f0']):016x}{int(first['f1']):016x}",
                              self.sources[first["source"]], self.sources[second["source"]])
        return None

    def close(self) -> None:
        self._held = []
        if self._dir is not None:
            self._dir.cleanup()

    def __enter__(self) -> "UidCheck":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
