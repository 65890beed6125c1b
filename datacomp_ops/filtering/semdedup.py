"""SemDeDup (Abbas et al., arXiv 2303.09540) and concept-complexity pruning, DBP (Abbas et al., arXiv 2401.04578).

SemDeDup: spherical k-means (faiss) on unit image features; within each
cluster the items are taken from the least prototypical (lowest cosine to
the centroid) to the most, and an item is removed when its cosine similarity
to an item before it exceeds 1 - epsilon (as SemDeDup's own semdedup.py does:
kept or removed, every earlier item counts; ``rule=kept`` counts the kept ones
only). So of a group of semantic duplicates the one farthest from the
cluster's centre stays.

DBP, after SemDeDup: per cluster, d_intra is the mean of 1 - cos(item,
centroid) over its remaining items and d_inter the mean of 1 - cos(centroid,
other centroid) over its 20 nearest centroids; complexity = d_intra x
d_inter; each cluster's share of the target size is softmax(complexity /
tau). A share beyond what a cluster holds goes to the others in proportion
to their shares; within a cluster the least prototypical items are kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .image_based import scaled_clusters

log = logging.getLogger(__name__)


@dataclass
class Clustered:
    """Unit features, their cluster, the unit centroids, and each item's cosine to its centroid."""

    features: np.ndarray
    labels: np.ndarray
    centroids: np.ndarray
    to_centroid: np.ndarray


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def spherical_kmeans(features: np.ndarray, k: int, iterations: int = 20, seed: int = 0) -> Clustered:
    import faiss

    x = np.ascontiguousarray(_unit(features))
    k = max(1, min(k, len(x)))
    kmeans = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=10_000_000, min_points_per_centroid=1)
    kmeans.train(x)
    centroids = np.ascontiguousarray(_unit(kmeans.centroids))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(centroids)
    sims, labels = index.search(x, 1)
    return Clustered(x, labels[:, 0], centroids, sims[:, 0])


RULES = ("published", "kept")


def semdedup_keep(c: Clustered, epsilon: float, rule: str = "published") -> np.ndarray:
    """Which items SemDeDup keeps (boolean over the rows of `c`).

    Within a cluster, from the least prototypical item to the most, ``published`` (SemDeDup's
    semdedup.py, the paper's Algorithm 1) removes an item whose largest cosine similarity to any item
    before it, kept or removed, exceeds 1 - epsilon; ``kept`` compares it with the items kept before it
    only, so of a chain of near-duplicates (a~b, b~c, a and c apart) it keeps a and c where the published
    rule keeps a alone.
    """
    if rule not in RULES:
        raise ValueError(f"semdedup rule {rule!r}: use one of {', '.join(RULES)}")
    keep = np.zeros(len(c.features), bool)
    threshold = 1.0 - epsilon
    order = np.lexsort((np.arange(len(c.labels)), c.to_centroid, c.labels))  # per cluster, least prototypical first
    bounds = np.flatnonzero(np.diff(c.labels[order])) + 1
    for members in np.split(order, bounds):
        x = c.features[members]
        sims = x @ x.T
        if rule == "published":
            # each item's largest similarity to an item before it: the column maxima of the strict upper triangle
            before = np.triu(sims, 1).max(axis=0) if len(members) > 1 else np.zeros(1, np.float32)
            keep[members[before <= threshold]] = True
            continue
        alive = np.ones(len(members), bool)
        for i in range(len(members)):
            if alive[i]:
                later = sims[i, i + 1:] > threshold
                alive[i + 1:][later] = False
        keep[members[alive]] = True
    return keep


def dbp_keep(c: Clustered, candidates: np.ndarray, target: int, tau: float, neighbours: int = 20) -> tuple[np.ndarray, dict]:
    """Concept-complexity pruning of the `candidates` (SemDeDup's survivors) down to `target` items."""
    k = len(c.centroids)
    labels = c.labels[candidates]
    dist = 1.0 - c.to_centroid[candidates]
    sizes = np.bincount(labels, minlength=k)
    d_intra = np.bincount(labels, weights=dist, minlength=k) / np.maximum(sizes, 1)
    cos = c.centroids @ c.centroids.T
    np.fill_diagonal(cos, -np.inf)
    m = min(neighbours, k - 1)
    if m > 0:
        nearest = np.sort(cos, axis=1)[:, ::-1][:, :m]
        d_inter = (1.0 - nearest).mean(axis=1)
    else:
        d_inter = np.ones(k)
    complexity = d_intra * d_inter
    present = sizes > 0
    logits = np.where(present, complexity / tau, -np.inf)
    shares = np.exp(logits - logits[present].max())
    shares /= shares.sum()
    quota = _apportion(shares, sizes, min(target, int(sizes.sum())))
    keep = np.zeros(len(c.features), bool)
    order = np.lexsort((candidates, -dist, labels))  # per cluster, least prototypical (largest distance) first
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for group in np.split(order, bounds):
        if len(group):
            cluster = labels[group[0]]
            keep[candidates[group[:quota[cluster]]]] = True
    info = {"clusters": k, "tau": tau, "target": int(target),
            "complexity_range": [float(complexity[present].min()), float(complexity[present].max())]}
    return keep, info


def _apportion(shares: np.ndarray, capacity: np.ndarray, total: int) -> np.ndarray:
    """Integer counts in proportion to `shares`, none above its capacity, summing to `total`."""
    quota = np.zeros(len(shares), np.int64)
    open_ = capacity > 0
    left = total
    while left > 0 and open_.any():
        want = shares * open_
        if want.sum() <= 0:  # the open clusters' shares underflowed to zero: share what is left evenly
            want = open_.astype(np.float64)
        want = want / want.sum() * left
        take = np.minimum(np.floor(want).astype(np.int64), capacity - quota)
        # the remainder by largest fractional part, among clusters with room
        rest = left - int(take.sum())
        room = (capacity - quota - take) > 0
        frac = np.where(room & open_, want - np.floor(want), -1.0)
        for i in np.argsort(-frac, kind="stable")[:rest]:
            if frac[i] >= 0:
                take[i] += 1
        quota += take
        left = total - int(quota.sum())
        open_ &= quota < capacity
        if take.sum() == 0:
            break
    return quota


def default_clusters(n: int) -> int:
    return scaled_clusters(n)
