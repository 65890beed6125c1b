"""DataComp's image-based baseline: k-means over the pool's L/14 image features, targets from ImageNet-1k.

As DataComp's ``image_based_clustering.py`` and ``apply_filter.py`` do it:
faiss k-means (L2, 20 iterations, the seed, no subsampling of the training
points) over the L/14 image features of the caption-filtered pool; a target
centroid is the nearest one (largest dot product) of some ImageNet-1k
training image; a sample is kept when its own nearest centroid (largest dot
product) is a target. DataComp used 100,000 centroids for its pools; here
the count scales with the pool unless given.
"""

from __future__ import annotations

import io
import logging
import pickle
import warnings
import zipfile

import numpy as np

from ..core import storage
from ..core.config import ConfigError
from .pool import PoolError

log = logging.getLogger(__name__)

DATACOMP_CLUSTERS = 100_000
DATACOMP_POOL = 12_800_000  # the small pool, the smallest DataComp clustered with 100,000 centroids
MIN_CLUSTERS = 8


def scaled_clusters(n: int) -> int:
    """DataComp's 100,000 centroids per 12.8M samples, scaled to a pool of `n` (at least 8, at most n)."""
    return max(1, min(n, max(MIN_CLUSTERS, round(DATACOMP_CLUSTERS * n / DATACOMP_POOL))))


def pool_centroids(features: np.ndarray, k: int, iterations: int = 20, seed: int = 0) -> np.ndarray:
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    if len(x) == 0:
        raise PoolError("image_based: no sample passes the caption filter, nothing to cluster")
    k = min(k, len(x))
    clustering = faiss.Clustering(x.shape[1], k)
    clustering.niter = iterations
    clustering.seed = seed
    clustering.max_points_per_centroid = 10_000_000  # DataComp: train on every point
    clustering.min_points_per_centroid = 1
    index = faiss.IndexFlatL2(x.shape[1])
    clustering.train(x, index)
    return faiss.vector_float_to_array(clustering.centroids).reshape(k, x.shape[1])


def nearest_centroid(features: np.ndarray, centroids: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """The centroid with the largest dot product for each row (DataComp's assignment, not L2)."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    out = np.empty(len(features), np.int64)
    for start in range(0, len(features), batch):
        chunk = np.ascontiguousarray(features[start:start + batch], dtype=np.float32)
        out[start:start + len(chunk)] = index.search(chunk, 1)[1][:, 0]
    return out


def target_centroids(targets: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    if targets.shape[1] != centroids.shape[1]:
        raise PoolError(f"image_based: ImageNet-1k embeddings have dimension {targets.shape[1]}, the pool's "
                        f"l14_img features {centroids.shape[1]}: they must come from the same L/14 model")
    return np.unique(nearest_centroid(targets, centroids))


def load_embeddings(url: str, what: str = "filtering.imagenet1k_embeddings") -> np.ndarray:
    """Rows of vectors: an ``.npy`` array (n, d), an ``.npz`` with ``image_features``, or a torch file
    (DataComp's ``in1k_clip_vit_l14_*.pt``: a dict with ``image_features``); several joined by commas."""
    parts = []
    for path in [p for p in url.split(",") if p]:
        if not storage.exists(path):
            raise ConfigError(f"{what}: {path} does not exist")
        data = storage.read_bytes(path)
        if path.endswith(".pt"):
            obj = load_torch_file(data, path)
            arr = obj["image_features"] if isinstance(obj, dict) else obj
            arr = arr.float().numpy() if hasattr(arr, "numpy") else np.asarray(arr)
        else:
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
            arr = loaded["image_features"] if hasattr(loaded, "files") else loaded
        if arr.ndim != 2:
            raise PoolError(f"{path}: {what} must be a 2-d array, got shape {arr.shape}")
        parts.append(np.asarray(arr, np.float32))
    if not parts:
        raise ConfigError(f"{what} is empty")
    return np.concatenate(parts)


# What the pickle of a numpy array calls, and nothing else: numpy 1.x wrote numpy.core, numpy 2 numpy._core
_ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles a numpy array and refuses every other global, so that no code of the file runs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"it pickles {module}.{name}, which is no part of a numpy array")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.empty(0))[0]  # this numpy's own, wherever it lives
        return getattr(np, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds torch storages")


def load_torch_file(data: bytes, path: str):
    """A torch file's tensors (torch's weights-only loader), or the numpy array DataComp's centroid files hold.

    DataComp writes its pool centroids with ``torch.save(numpy_array, path, pickle_protocol=4)``, which
    torch's weights-only loader refuses (protocol 4's framing, numpy's globals), and loading it without
    weights_only would run whatever code the file pickles. Such a file's pickle is read here with an
    unpickler that allows numpy's array reconstruction alone.
    """
    import torch

    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the fallback below is for those
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways: UnpicklingError, RuntimeError, KeyError...
        refused = f"{type(exc).__name__}: {exc}"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if name is None:
                raise pickle.UnpicklingError("it is a zip without a pickled object (data.pkl)")
            arr = _ArrayUnpickler(io.BytesIO(archive.read(name))).load()
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
            what = f"an array of dtype {arr.dtype}" if isinstance(arr, np.ndarray) else f"a {type(arr).__name__}"
            raise pickle.UnpicklingError(f"it holds {what}, not a numeric array")
        return arr
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        first = refused.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0]  # its cause, not its advice
        raise PoolError(f"{path}: neither tensors torch loads safely ({first}) nor a numpy array saved with "
                        f"torch.save, as DataComp's centroid files are ({exc}); none of its code was run") from None


def embed_images(images: list, config, batch_size: int = 64) -> np.ndarray:
    """Targets given as images, embedded with the pool's L/14 model (the embedded stand-in, or the L/14
    the config names), so that targets and pool features share one space."""
    from ..pool.clip_features import ClipEncoder
    from ..pool.models import choose_models

    encoder = ClipEncoder(choose_models(config)["clip_l14"])
    out = [encoder.encode_images([encoder.preprocess(im) for im in images[i:i + batch_size]])
           for i in range(0, len(images), batch_size)]
    log.info("image-based targets: %d images embedded with %s", len(images), encoder.name)
    return np.concatenate(out)
