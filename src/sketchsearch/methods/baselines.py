"""Closed-form pixel baselines: LSH, ITQ and PCA on flattened rasters (default 32 x 32).

* ``lsh``: the sign of random Gaussian projections of the centred pixels (Charikar 2002, "Similarity
  estimation techniques from rounding algorithms"); seeded.
* ``itq``: Iterative Quantization (Gong & Lazebnik, CVPR 2011; PAMI 2013): PCA to ``nbits`` dimensions,
  then ``iterations`` (50, as in the paper) alternations of ``B = sign(V R)`` and the orthogonal
  Procrustes rotation ``R = U W^T`` from the SVD ``V^T B = U S W^T``, from a seeded random orthogonal ``R``.
* ``pca``: the float baseline: the top ``dim`` principal components, L2-normalised (cosine search).

Each reads ``features="pixels"`` (the flattened raster, default) or ``"hog"``: histograms of oriented
gradients (Dalal & Triggs, CVPR 2005; scikit-image's ``hog``: 9 orientations, 8 x 8 cells over the raster,
2 x 2-cell blocks, L2-Hys), the "Dense-HOG" of the fine-grained SBIR baselines (Yu et al., "Sketch Me That
Shoe", CVPR 2016; GDH's Table 4). At the default 128 px for HOG that is 7 x 7 blocks x 36 = 1,764 dims.

The fitted parameters are registered buffers (``mean``, ``projection``, ``rotation``, ``fitted``), so
``save_model`` / ``load_model`` round-trip them through safetensors.

ITQ is hand-written (about 15 lines of numpy) because the one library that has it, ``faiss.ITQTransform``,
also L2-normalises its inputs and sub-samples the training set, and hides its matrices behind SWIG
``LinearTransform`` objects; the paper's algorithm on raw centred pixels is what the baseline tables need.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ModelError
from .base import METHODS, Batch, Method, Preprocessing

__all__ = [
    "FEATURES",
    "PixelITQ",
    "PixelLSH",
    "PixelPCA",
    "hog_features",
    "itq_rotation",
    "pca_basis",
    "training_rasters",
]

#: Raster side of the pixel baselines (32 x 32 = 1024 dimensions).
DEFAULT_RASTER_SIZE = 32
#: what the projection reads: the raster's pixels or its HOG descriptor
FEATURES = ("pixels", "hog")
#: Raster side for ``features="hog"`` (16 px cells; 1,764 dims)
HOG_RASTER_SIZE = 128
HOG_CELLS = 8  # cells per side
HOG_ORIENTATIONS = 9  # Dalal & Triggs 2005: 9 unsigned orientation bins


def _default_pre(preprocessing: Preprocessing | None, features: str = "pixels") -> Preprocessing:
    if features == "hog":  # lines ~2 px at 128 px, as thin as the drawings' own detail
        pre = preprocessing or Preprocessing(inputs=("raster",), raster_size=HOG_RASTER_SIZE, line_width=2.0)
    else:
        pre = preprocessing or Preprocessing(inputs=("raster",), raster_size=DEFAULT_RASTER_SIZE)
    if "raster" not in pre.inputs:
        raise ValueError(f"pixel baselines read rasters; preprocessing.inputs must include 'raster', got {pre.inputs}")
    return pre


def training_rasters(data: Any, pre: Preprocessing) -> np.ndarray:
    """Training data -> float64 (N, H*W) flattened rasters at ``pre.raster_size``.

    ``data`` may be an array / tensor float (N, H, W) or (N, 1, H, W) with ink = 1; a torch ``Dataset`` whose
    examples are dicts with ``"raster"`` (``RasterDataset``, ``SketchDataset``); or a sequence of drawings
    (``Sketch``, raster arrays, PIL images), rendered with ``pre``.
    """
    size = pre.raster_size
    if isinstance(data, Tensor):
        data = data.detach().cpu().numpy()
    if isinstance(data, np.ndarray):
        arr = data
    elif isinstance(data, Dataset):
        arr = np.stack([np.asarray(data[i]["raster"]) for i in range(len(data))])  # type: ignore[arg-type]
    elif isinstance(data, Sequence):
        from ..data.batching import make_example

        arr = np.stack([make_example(x, pre)["raster"] for x in data]) if len(data) else np.zeros((0, size, size))
    else:
        raise TypeError(f"cannot fit on {type(data).__name__}: give rasters (N, H, W), a Dataset or a list of sketches")
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[1:] != (size, size):
        raise ValueError(f"training rasters must be (N, {size}, {size}) (preprocessing.raster_size), got {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float64) / 255.0
    return arr.reshape(len(arr), -1).astype(np.float64)


def pca_basis(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), components (D, n_components)) of the rows of ``x`` float64 (N, D), by the eigenvectors of
    the covariance (D is small: 1024 at 32 x 32), largest variance first. Each component's sign is fixed so
    that its largest-magnitude entry is positive, so the result does not depend on the LAPACK build."""
    n, d = x.shape
    if n < 2:
        raise ValueError(f"PCA needs at least 2 training rasters, got {n}")
    if n_components > d:
        raise ValueError(f"cannot keep {n_components} components of {d}-dimensional rasters")
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / (n - 1)
    # only the top eigenpairs (LAPACK syevr), largest last
    w, v = scipy.linalg.eigh(cov, subset_by_index=[d - n_components, d - 1])
    comps = v[:, np.argsort(w)[::-1]]
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(n_components)])
    return mean, comps * np.where(signs == 0, 1.0, signs)


def itq_rotation(v: np.ndarray, iterations: int = 50, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """The ITQ rotation of PCA-projected data ``v`` float64 (N, c): returns ``(R (c, c), losses)`` where
    ``losses[t] = ||B - V R||_F^2 / N`` after iteration t (non-increasing)."""
    c = v.shape[1]
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((c, c)))
    rot = q * np.sign(np.diag(r))  # a uniformly random orthogonal matrix
    losses: list[float] = []
    for _ in range(iterations):
        z = v @ rot
        b = np.where(z >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(v.T @ b)
        rot = u @ wt
        losses.append(float(((b - v @ rot) ** 2).sum() / len(v)))
    return rot, losses


def _check_nbits(name: str, nbits: Any) -> None:
    if not isinstance(nbits, int) or isinstance(nbits, bool) or nbits < 8 or nbits % 8:
        raise ValueError(f"{name}: nbits must be a positive multiple of 8 (codes are packed bytes), got {nbits!r}")


def hog_features(rasters: np.ndarray) -> np.ndarray:
    """float64 (N, D) HOG descriptors of rasters (N, S, S), ink = 1 (see the module docstring)."""
    from skimage.feature import hog

    n, s = len(rasters), rasters.shape[-1]
    if s % HOG_CELLS or s < 2 * HOG_CELLS:
        raise ValueError(f"hog features need a raster side that is a multiple of {HOG_CELLS}, got {s}")
    out = [
        hog(r, orientations=HOG_ORIENTATIONS, pixels_per_cell=(s // HOG_CELLS,) * 2, cells_per_block=(2, 2))
        for r in rasters
    ]
    return np.stack(out).astype(np.float64) if n else np.zeros((0, feature_dim("hog", s)))


def feature_dim(features: str, size: int) -> int:
    """Dimensions of ``features`` of an ``size`` px raster."""
    if features == "hog":
        return (HOG_CELLS - 1) ** 2 * 4 * HOG_ORIENTATIONS
    return size * size


class _PixelProjection(Method):
    """Flattened raster (or its HOG) -> minus ``mean`` -> ``@ projection`` (D, c); subclasses fit the buffers."""

    closed_form = True

    def __init__(self, preprocessing: Preprocessing | None, out_dim: int, features: str = "pixels") -> None:
        if features not in FEATURES:
            raise ValueError(f"{self.name}: features must be one of {', '.join(FEATURES)}, got {features!r}")
        super().__init__(_default_pre(preprocessing, features))
        if not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f"{self.name}: code size must be a positive int, got {out_dim!r}")
        self.features = features
        d = feature_dim(features, self.preprocessing.raster_size)
        self._out_dim = out_dim
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("projection", torch.zeros(d, out_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.uint8))
        #: what the last ``fit`` measured (training size, seconds, ITQ losses); not saved with the weights
        self.fit_info: dict[str, Any] = {}

    @property
    def code_size(self) -> int:
        return self._out_dim

    def _project(self, batch: Batch) -> Tensor:
        if not bool(self.fitted):
            raise ModelError(f"{self.name}: call fit() (or load a fitted model) before encoding")
        x = batch["raster"]
        s = self.preprocessing.raster_size
        if x.shape[-2:] != (s, s):
            raise ValueError(f"{self.name}: batch['raster'] must be (B, 1, {s}, {s}), got {tuple(x.shape)}")
        if self.features == "hog":
            feats = torch.from_numpy(hog_features(x[:, 0].detach().cpu().numpy().astype(np.float64)))
            return (feats.to(self.projection) - self.mean) @ self.projection
        flat = x.reshape(x.shape[0], -1).to(self.projection.dtype)
        return (flat - self.mean) @ self.projection

    def _training_features(self, batches: Any) -> np.ndarray:
        """float64 (N, D): the training drawings' pixels (or HOG), see :func:`training_rasters`."""
        x = training_rasters(batches, self.preprocessing)
        if self.features == "hog":
            s = self.preprocessing.raster_size
            return hog_features(x.reshape(len(x), s, s))
        return x

    def _store(self, mean: np.ndarray, projection: np.ndarray) -> None:
        self.mean.copy_(torch.from_numpy(mean).to(self.mean.dtype))
        self.projection.copy_(torch.from_numpy(projection).to(self.projection.dtype))
        self.fitted.fill_(1)


@METHODS.register("lsh")
class PixelLSH(_PixelProjection):
    """Random-hyperplane LSH on centred pixels: bits = sign((x - mean) @ W), W ~ N(0, 1) (D, nbits)."""

    name = "lsh"
    output = "binary"

    def __init__(
        self, preprocessing: Preprocessing | None = None, nbits: int = 64, seed: int = 0, features: str = "pixels"
    ) -> None:
        _check_nbits("lsh", nbits)
        super().__init__(preprocessing, nbits, features)
        self.seed = seed

    def fit(self, batches: Any) -> None:
        """Learn the pixel mean of ``batches`` (see :func:`training_rasters`); draw the seeded hyperplanes."""
        t0 = time.perf_counter()
        x = self._training_features(batches)
        if len(x) == 0:
            raise ValueError("lsh: no training rasters")
        w = np.random.default_rng(self.seed).standard_normal((x.shape[1], self.code_size))
        self._store(x.mean(axis=0), w)
        self.fit_info = {"n_train": len(x), "fit_seconds": time.perf_counter() - t0}

    def encode_sketch(self, batch: Batch) -> Tensor:
        """(B, nbits) float relaxed codes; the bits are ``z > 0``."""
        return self._project(batch)


@METHODS.register("itq")
class PixelITQ(_PixelProjection):
    """ITQ on pixels: bits = sign((x - mean) @ P @ R), P the top-``nbits`` PCA basis, R the ITQ rotation."""

    name = "itq"
    output = "binary"

    def __init__(
        self,
        preprocessing: Preprocessing | None = None,
        nbits: int = 64,
        iterations: int = 50,  # Gong & Lazebnik 2011, section 3: "50 iterations"
        seed: int = 0,
        features: str = "pixels",  # or "hog" (the module docstring)
    ) -> None:
        _check_nbits("itq", nbits)
        super().__init__(preprocessing, nbits, features)
        d = feature_dim(self.features, self.preprocessing.raster_size)
        if nbits > d:
            raise ValueError(f"itq: nbits={nbits} exceeds the {d} {self.features} dimensions")
        self.iterations = iterations
        self.seed = seed
        self.register_buffer("rotation", torch.eye(nbits))

    def fit(self, batches: Any) -> None:
        """PCA to ``nbits`` dimensions, then the ITQ rotation (see :func:`itq_rotation`)."""
        t0 = time.perf_counter()
        x = self._training_features(batches)
        if len(x) <= self.code_size:
            raise ValueError(
                f"itq: {self.code_size} bits need more than {self.code_size} training rasters, got {len(x)}"
            )
        mean, comps = pca_basis(x, self.code_size)
        v = (x - mean) @ comps
        rot, losses = itq_rotation(v, self.iterations, self.seed)
        # one matrix at inference: (x - mean) @ (P R); the rotation is kept too, for inspection
        self._store(mean, comps @ rot)
        self.rotation.copy_(torch.from_numpy(rot).to(self.rotation.dtype))
        self.fit_info = {
            "n_train": len(x),
            "fit_seconds": time.perf_counter() - t0,
            "quantization_loss": losses[-1] if losses else None,
            "quantization_loss_first": losses[0] if losses else None,
        }

    def encode_sketch(self, batch: Batch) -> Tensor:
        """(B, nbits) float relaxed codes; the bits are ``z > 0``."""
        return self._project(batch)


@METHODS.register("pca")
class PixelPCA(_PixelProjection):
    """Float baseline: the top ``dim`` principal components of the pixels, L2-normalised."""

    name = "pca"
    output = "float"

    def __init__(self, preprocessing: Preprocessing | None = None, dim: int = 64, features: str = "pixels") -> None:
        super().__init__(preprocessing, dim, features)

    def fit(self, batches: Any) -> None:
        t0 = time.perf_counter()
        x = self._training_features(batches)
        self._store(*pca_basis(x, self.code_size))
        self.fit_info = {"n_train": len(x), "fit_seconds": time.perf_counter() - t0}

    def encode_sketch(self, batch: Batch) -> Tensor:
        """(B, dim) float32, L2-normalised."""
        return torch.nn.functional.normalize(self._project(batch), dim=1)
