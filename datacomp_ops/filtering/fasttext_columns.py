"""fastText's supervised language-id model (lid.176) evaluated on whole columns with numpy.

fastText's C++ predicts one caption at a time under the GIL, about 10 µs each,
most of it hashing character n-grams and looking each up in the pruned
model's hash map. Captions share their words, so here each distinct word's
input rows are found once (the n-gram hashes computed for all words at once),
a caption's hidden vector is the mean of its words' rows, and the hierarchical
softmax is a walk over the label tree with one column per caption.

The answer is fastText's: the top label is taken where it beats the runner-up
by more than float rounding can move a score (fastText sums in float32, this
in float64); the near-ties left are predicted by fastText itself. Models that
this reader does not cover (other losses, word n-grams) are predicted by
fastText alone.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FASTTEXT_MAGIC = 793712314
EOS = b"</s>"
LABEL_PREFIX = b"__label__"
LOSS_HS = 1
# fastText sums in float32: its scores and ours differ by ~1e-5 at most; closer calls go to fastText
MARGIN = 1e-3
# std_log(0): fastText drops a label whose log-probability is below this (threshold 0)
LOG_FLOOR = np.log(1e-5)
_PROBE = 1 << 16  # rows per block of the label-tree walk


class UnsupportedModel(ValueError):
    """A fastText model outside what this reader evaluates (the caller asks fastText instead)."""


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def read(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype, count, self.at)
        self.at += out.nbytes
        return out

    def cstring(self) -> bytes:
        end = self.data.index(b"\0", self.at)
        out, self.at = self.data[self.at:end], end + 1
        return out


def _product_quantizer(r: _Reader) -> tuple[int, int, int, np.ndarray]:
    dim, nsubq, dsub, lastdsub = r.read("4i")
    return nsubq, dsub, lastdsub, r.array("<f4", dim * 256)


def _decode(codes: np.ndarray, pq, norms: np.ndarray | None) -> np.ndarray:
    """ProductQuantizer::addcode for every row: centroid pieces side by side, times the row's norm."""
    nsubq, dsub, lastdsub, centroids = pq
    pieces = []
    for m in range(nsubq):
        d = lastdsub if m == nsubq - 1 else dsub
        table = centroids[m * 256 * dsub: m * 256 * dsub + 256 * d].reshape(256, d)
        pieces.append(table[codes[:, m]])
    rows = np.concatenate(pieces, axis=1)
    return rows * norms[:, None] if norms is not None else rows


def _matrix(r: _Reader, quantized: bool) -> np.ndarray:
    if not quantized:
        m, n = r.read("qq")
        return r.array("<f4", m * n).reshape(m, n)
    qnorm = r.read("?")
    m, n = r.read("qq")
    codes = r.array("u1", r.read("i")).reshape(m, -1)
    pq = _product_quantizer(r)
    norms = None
    if qnorm:
        norm_codes = r.array("u1", m)
        norms = _decode(norm_codes[:, None], _product_quantizer(r), None)[:, 0]
    # float32 products, as fastText's alpha * c[n]
    return _decode(codes, pq, norms).astype(np.float32)


@dataclass
class _Tree:
    """HierarchicalSoftmaxLoss::buildTree over the label counts: children of internal node i < i."""
    left: np.ndarray
    right: np.ndarray

    @classmethod
    def build(cls, counts: np.ndarray) -> "_Tree":
        osz = len(counts)
        count = np.full(2 * osz - 1, 1e15)
        count[:osz] = counts
        left, right = np.full(2 * osz - 1, -1), np.full(2 * osz - 1, -1)
        leaf, node = osz - 1, osz
        for i in range(osz, 2 * osz - 1):
            mini = [0, 0]
            for j in range(2):
                if leaf >= 0 and count[leaf] < count[node]:
                    mini[j], leaf = leaf, leaf - 1
                else:
                    mini[j], node = node, node + 1
            left[i], right[i] = mini
            count[i] = count[mini[0]] + count[mini[1]]
        return cls(left, right)


class FastTextColumns:
    """A fastText supervised model file (.bin or quantized .ftz) read for column-wise prediction."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            r = _Reader(f.read())
        if r.read("i") != FASTTEXT_MAGIC:
            raise UnsupportedModel(f"{path} is not a fastText model")
        version = r.read("i")
        names = "dim ws epoch min_count neg word_ngrams loss model bucket minn maxn lr_update_rate".split()
        self.args = dict(zip(names, r.read("12i")))
        r.read("d")
        if version == 11 and self.args["model"] == 3:
            self.args["maxn"] = 0  # as fastText loads them: supervised models of format 11 had no n-grams
        if self.args["loss"] != LOSS_HS or self.args["word_ngrams"] > 1 or self.args["model"] != 3:
            raise UnsupportedModel(f"{path}: only supervised hierarchical-softmax models without word n-grams")
        size, self.nwords, nlabels = r.read("iii")
        _, prune_size = r.read("qq")
        self.words: dict[bytes, int] = {}
        labels, counts = [], []
        for i in range(size):
            word = r.cstring()
            count, kind = r.read("qb")
            if kind == 0:
                self.words[word] = i
            else:
                labels.append(word.removeprefix(LABEL_PREFIX).decode())
                counts.append(count)
        self.labels = np.array(labels, dtype=object)
        pairs = r.array("<i4", 2 * max(prune_size, 0)).reshape(-1, 2)  # -1: not pruned
        order = np.argsort(pairs[:, 0], kind="stable")
        self.prune_size = prune_size
        self.prune_keys, self.prune_rows = pairs[order, 0].astype(np.int64), pairs[order, 1].astype(np.int64)
        self.input = _matrix(r, r.read("?"))
        self.output = _matrix(r, r.read("?"))
        self.tree = _Tree.build(np.asarray(counts, dtype=np.float64))
        self.path = path

    # -- inputs -----------------------------------------------------------------

    def _ngram_rows(self, tokens: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(token index, input row) of every kept character n-gram of "<token>" (Dictionary::computeSubwords:
        n-grams of minn..maxn UTF-8 characters, FNV-1a hashed over sign-extended bytes, mod bucket, then
        the pruned model's index; single characters at either end are not n-grams)."""
        minn, maxn, bucket = self.args["minn"], self.args["maxn"], self.args["bucket"]
        if maxn <= 0 or self.prune_size == 0 or not tokens:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        framed = [b"<" + t + b">" for t in tokens]
        lengths = np.fromiter((len(w) for w in framed), np.int64, len(framed))
        data = np.frombuffer(b"".join(framed), np.uint8)
        ends = np.cumsum(lengths)
        owner = np.repeat(np.arange(len(framed)), lengths)
        word_end = ends[owner]
        word_start = word_end - lengths[owner]
        continuation = (data & 0xC0) == 0x80
        starts = np.flatnonzero(~continuation)
        first, last = word_start[starts], word_end[starts]
        signed = data.astype(np.int8).astype(np.int32).view(np.uint32)  # uint32_t(int8_t(c))
        prime = np.uint32(16777619)
        h = np.full(len(starts), 2166136261, np.uint32)
        j = starts.copy()
        active = np.ones(len(starts), bool)
        out_token, out_hash = [], []
        for n in range(1, maxn + 1):
            # the n-th character: its lead byte, then its continuation bytes
            active &= j < last
            step = active
            while step.any():
                idx = j[step]
                h[step] = (h[step] ^ signed[idx]) * prime
                j[step] += 1
                step = step & (j < last)
                step[step] = continuation[j[step]]
            if n >= minn:
                keep = active & ~((n == 1) & ((starts == first) | (j == last)))
                out_token.append(owner[starts[keep]])
                out_hash.append(h[keep] % np.uint32(bucket))
            if not active.any():
                break
        token = np.concatenate(out_token) if out_token else np.zeros(0, np.int64)
        hashes = np.concatenate(out_hash).astype(np.int64) if out_hash else np.zeros(0, np.int64)
        if self.prune_size < 0:  # not pruned: bucket rows follow the words
            return token, self.nwords + hashes
        at = np.searchsorted(self.prune_keys, hashes)
        found = at < len(self.prune_keys)
        found[found] = self.prune_keys[at[found]] == hashes[found]
        return token[found], self.nwords + self.prune_rows[at[found]]

    def _token_sums(self, tokens: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Each token's summed input rows (float64) and their count (Dictionary::getLine's inputs)."""
        dim = self.input.shape[1]
        sums = np.zeros((len(tokens), dim))
        counts = np.zeros(len(tokens), np.int64)
        ids = np.fromiter((self.words.get(t, -1) for t in tokens), np.int64, len(tokens))
        is_label = np.fromiter((t.startswith(LABEL_PREFIX) for t in tokens), bool, len(tokens))
        known = (ids >= 0) & ~is_label
        sums[known] += self.input[ids[known]]
        counts[known] += 1
        eos = np.array([t == EOS for t in tokens], bool)
        hashed = np.flatnonzero(~is_label & ~eos)
        token, rows = self._ngram_rows([tokens[i] for i in hashed])
        token = hashed[token]
        for d in range(dim):
            sums[:, d] += np.bincount(token, weights=self.input[rows, d], minlength=len(tokens))
        counts += np.bincount(token, minlength=len(tokens))
        return sums, counts

    def hidden(self, lines: pa.Array) -> np.ndarray:
        """The mean input row of each line (one line per caption, no newlines), with the line's end (</s>)."""
        from scipy import sparse

        n = len(lines)
        if pc.any(pc.match_substring(lines, "\x00")).as_py():
            lines = pc.replace_substring(lines, "\x00", " ")
        # Arrow's ASCII whitespace is fastText's separators but for NUL, replaced above
        words = pc.ascii_split_whitespace(lines)
        flat = pc.list_flatten(words)
        line_of = pc.list_parent_indices(words).to_numpy()
        nonempty = pc.not_equal(flat, "")
        flat, line_of = flat.filter(nonempty), line_of[nonempty.to_numpy(zero_copy_only=False)]
        encoded = pc.dictionary_encode(flat)
        tokens = [t.encode() for t in encoded.dictionary.to_pylist()]
        sums, counts = self._token_sums(tokens + [EOS])
        # one row per line over the distinct tokens; </s> (the last token) ends every line once
        indptr = np.concatenate([[0], np.cumsum(np.bincount(line_of, minlength=n))])
        words_of = sparse.csr_matrix((np.ones(len(line_of)), encoded.indices.to_numpy(), indptr),
                                     shape=(n, len(tokens)))
        return (words_of @ sums[:-1] + sums[-1]) / (words_of @ counts[:-1] + counts[-1])[:, None]

    # -- labels -----------------------------------------------------------------

    def _node_logs(self, hidden: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log-probabilities (fastText's std_log) of taking the left and the right child at each row's node."""
        x = np.einsum("ij,ij->i", hidden, self.output[nodes - len(self.labels)])
        p = 1.0 / (1.0 + np.exp(-x))
        return np.log(1.0 - p + 1e-5), np.log(p + 1e-5)

    def _walk_all(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every leaf's score for each row (HierarchicalSoftmaxLoss::dfs without pruning): (top, margin)."""
        osz = len(self.labels)
        left, right = self.tree.left, self.tree.right
        f = 1.0 / (1.0 + np.exp(-(self.output[: osz - 1].astype(np.float64) @ hidden.T)))
        score = np.zeros((2 * osz - 1, len(hidden)))
        for node in range(2 * osz - 2, osz - 1, -1):
            p = f[node - osz]
            score[left[node]] = score[node] + np.log(1.0 - p + 1e-5)
            score[right[node]] = score[node] + np.log(p + 1e-5)
        leaves = np.ascontiguousarray(score[:osz].T)
        top = np.argmax(leaves, axis=1)
        rows = np.arange(len(hidden))
        first = leaves[rows, top]
        leaves[rows, top] = -np.inf
        return top, np.minimum(first - leaves.max(axis=1), first - LOG_FLOOR)

    def top_labels(self, lines: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """fastText's top label of each line, and whether it is certain (clear of the runner-up and of
        fastText's probability floor by MARGIN); uncertain lines are for fastText to decide.

        Each row first follows the likelier child down the label tree; every branch it leaves behind bounds
        the leaves under it (a step adds at most log(1 + 1e-5)), so where all of them stay below the leaf
        reached, that leaf is the top. The other rows score every leaf.
        """
        hidden = self.hidden(lines)
        n, osz = len(hidden), len(self.labels)
        node = np.full(n, 2 * osz - 2)
        score = np.zeros(n)
        behind = np.full(n, -np.inf)
        rows = np.arange(n)
        depth = 0
        while len(rows):
            left_log, right_log = self._node_logs(hidden[rows], node[rows])
            go_right = right_log > left_log
            behind[rows] = np.maximum(behind[rows], score[rows] + np.where(go_right, left_log, right_log))
            score[rows] += np.where(go_right, right_log, left_log)
            node[rows] = np.where(go_right, self.tree.right[node[rows]], self.tree.left[node[rows]])
            rows = rows[node[rows] >= osz]
            depth += 1
        slack = depth * np.log1p(1e-5)
        margin = np.minimum(score - (behind + slack), score - LOG_FLOOR)
        top = node.copy()
        unsure = np.flatnonzero(margin <= MARGIN)
        for lo in range(0, len(unsure), _PROBE):
            part = unsure[lo:lo + _PROBE]
            top[part], margin[part] = self._walk_all(hidden[part])
        return self.labels[top], margin > MARGIN


@functools.lru_cache(maxsize=4)
def load(path: str) -> FastTextColumns:
    return FastTextColumns(path)
