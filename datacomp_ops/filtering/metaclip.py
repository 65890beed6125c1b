"""MetaCLIP's balancing (Xu et al., arXiv 2309.16671): substring matching, entry counts, balanced sampling.

As MetaCLIP's ``substr_matching.py`` and ``balancing.py`` do it: a caption is
spaced (padded with spaces, ``, . ; : ? ! `` wrapped in spaces, tabs and
newlines turned into spaces) and matched case-sensitively against the
entries padded with spaces (``" entry "``), so entries match whole words,
with an Aho-Corasick automaton. Each entry's count is the number of captions
of the pool that match it; entry e is drawn with p_e = min(1, t / count_e),
and a sample is kept when the draw of any of its matched entries fires.

The draws are hashed from (uid, entry, seed) rather than taken from a
running random generator, so a rerun or a retried task keeps the same subset
and the draw of one sample does not depend on the others.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.config import ConfigError
from . import language
from .hashing import mix64, seed_salt

log = logging.getLogger(__name__)

_WRAPPED = [",", ".", ";", ":", "?", "!", "`"]
_SPACED = ["\t", "\n", "\r"]


def load_entries(path: str) -> list[str]:
    """MetaCLIP's metadata.json (a JSON list of strings) or a text file with one entry per line."""
    if not path or not os.path.isfile(path):
        raise ConfigError(f"filtering.metaclip_entries: {path or '(not set)'} is not a file of metadata entries "
                          f"(MetaCLIP's metadata.json, or one entry per line)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ConfigError(f"{path}: expected a JSON list of strings")
    else:
        entries = [line.rstrip("\n") for line in text.splitlines()]
    entries = [e for e in entries if e.strip()]
    if not entries:
        raise ConfigError(f"{path}: no metadata entries")
    return entries


@functools.lru_cache(maxsize=2)
def _automaton(path: str):
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for idx, entry in enumerate(load_entries(path)):
        automaton.add_word(f" {entry} ", idx)
    automaton.make_automaton()
    return automaton


def spaced(captions: pa.Array) -> pa.Array:
    """MetaCLIP's spacing of each caption, column-wise."""
    out = language.texts(captions)
    for p in _WRAPPED:
        out = pc.replace_substring(out, p, f" {p} ")
    for c in _SPACED:
        out = pc.replace_substring(out, c, " ")
    return pc.binary_join_element_wise(" ", out, " ", "")


def match(captions: pa.Array, entries_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(row offsets, entry ids): the distinct entries each caption matches, as CSR arrays."""
    automaton = _automaton(entries_path)
    offsets = np.zeros(len(captions) + 1, np.int64)
    ids: list[int] = []
    for i, text in enumerate(spaced(captions).to_pylist()):
        found = {idx for _, idx in automaton.iter(text)}
        ids.extend(sorted(found))
        offsets[i + 1] = len(ids)
    return offsets, np.asarray(ids, np.int64)


def entry_counts(entry_ids: np.ndarray, n_entries: int) -> np.ndarray:
    return np.bincount(entry_ids, minlength=n_entries).astype(np.int64)


def balanced_draw(offsets: np.ndarray, entry_ids: np.ndarray, uids: np.ndarray, counts: np.ndarray, t: int,
                  seed: int = 0) -> np.ndarray:
    """Keep a sample when some matched entry's draw falls below p_e = min(1, t / count_e)."""
    n = len(offsets) - 1
    rows = np.repeat(np.arange(n), np.diff(offsets))
    prob = t / np.maximum(counts, t).astype(np.float64)
    with np.errstate(over="ignore"):  # 64-bit hashing wraps around on purpose
        salt = mix64(entry_ids.astype(np.uint64) + seed_salt(seed))
        h = mix64(uids["f0"][rows] ^ salt) ^ mix64(uids["f1"][rows] + salt)
    u = (h >> np.uint64(11)).astype(np.float64) / float(2**53)  # uniform in [0, 1)
    fired = u < prob[entry_ids]
    return np.bincount(rows[fired], minlength=n) > 0
