"""Unsupervised hashing baselines on raw vectors (pixels): LSH, spectral hashing, PCA hashing and PCA-ITQ.

Each baseline is a small estimator: ``fit(x_train) -> self`` learns from the database vectors, ``encode(x)`` returns
packed codes ``uint8[n, ceil(bits/8)]`` in the project's one format (MSB first, :func:`semhash_spark.codes.pack_bits`).
Inputs are ``[n, d]`` arrays of any real dtype (uint8 pixels included); they are converted to float in row chunks so
a 50K x 3072 uint8 database is never held as float64. Every random choice comes from the ``seed`` given.

- :class:`LSH` - random hyperplanes through the training mean (Charikar, "Similarity estimation techniques from
  rounding algorithms", STOC 2002).
- :class:`SpectralHashing` - Weiss, Torralba & Fergus, "Spectral Hashing", NIPS 2008, following the authors'
  reference MATLAB code (``trainSH.m`` / ``compressSH.m``): PCA, a uniform box per PCA direction, the ``bits``
  one-dimensional eigenfunctions of smallest eigenvalue, bit = sign(sin(pi/2 + k pi / (b - a) * (x - a))).
- :class:`PCAH` - sign of the top-``bits`` PCA projections of centred data.
- :class:`PCAITQ` - Gong & Lazebnik, "Iterative Quantization", CVPR 2011: PCA to ``bits`` dims, then 50 alternating
  steps of sign quantisation and an orthogonal Procrustes rotation.

The PCA-based baselines can share one :class:`PCA` (fit it once with the largest bit count and pass ``pca=``), since
PCA to ``b`` dims is the first ``b`` components of PCA to more dims.
"""

from __future__ import annotations

import logging

import numpy as np

from semhash_spark.codes import pack_bits

log = logging.getLogger(__name__)

_ROWS_PER_CHUNK = 4096  # rows converted to float at a time (4096 x 3072 float32 = 48 MB)


def _check_2d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-d array [n, d], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{what} must hold real numbers, got dtype {x.dtype}")
    return x


def _chunks(n: int, size: int = _ROWS_PER_CHUNK):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _mean(x: np.ndarray) -> np.ndarray:
    """Column means ``float64[d]``, accumulated in row chunks."""
    total = np.zeros(x.shape[1], dtype=np.float64)
    for sl in _chunks(x.shape[0]):
        total += x[sl].sum(axis=0, dtype=np.float64)
    return total / x.shape[0]


def _project(x: np.ndarray, mean: np.ndarray, w: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``(x - mean) @ w`` in row chunks: ``dtype[n, w.shape[1]]``."""
    out = np.empty((x.shape[0], w.shape[1]), dtype=dtype)
    mean = mean.astype(dtype)
    w = w.astype(dtype)
    for sl in _chunks(x.shape[0]):
        out[sl] = (x[sl].astype(dtype) - mean) @ w
    return out


class _Fitted:
    """Shared checks of a fitted encoder."""

    dim_: int | None = None

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        if self.dim_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(x_train) first")
        x = _check_2d(x, "x")
        if x.shape[1] != self.dim_:
            raise ValueError(f"{type(self).__name__} was fitted on {self.dim_}-d vectors, got {x.shape[1]}-d")
        return x


# ---------------------------------------------------------------------------------------------------- PCA


class PCA(_Fitted):
    """Principal components from the covariance of the training rows (eigendecomposition in float64).

    ``mean_`` is ``float64[d]``, ``components_`` ``float64[d, dims]`` (columns by decreasing variance, each with its
    largest-magnitude entry positive so the basis is deterministic), ``explained_variance_`` ``float64[dims]``.
    """

    def __init__(self, dims: int):
        if dims <= 0:
            raise ValueError(f"PCA dims must be positive, got {dims}")
        self.dims = int(dims)

    def fit(self, x: np.ndarray) -> PCA:
        x = _check_2d(x, "x_train")
        n, d = x.shape
        if self.dims > min(n, d):
            raise ValueError(
                f"PCA to {self.dims} dims needs at most min(n, d) = min({n}, {d}) = {min(n, d)} dims: "
                f"use fewer bits or more training vectors"
            )
        mean = _mean(x)
        if n < d:  # fewer rows than dims: the thin SVD of the centred rows is cheaper than a d x d eigenproblem
            _, s, vt = np.linalg.svd(x.astype(np.float64) - mean, full_matrices=False)
            evals, comps = s[: self.dims] ** 2 / max(1, n - 1), vt[: self.dims].T
        else:
            cov = np.zeros((d, d), dtype=np.float64)
            mean32 = mean.astype(np.float32)
            for sl in _chunks(n):
                xc = x[sl].astype(np.float32) - mean32
                cov += (xc.T @ xc).astype(np.float64)  # float32 BLAS per chunk, summed in float64
            cov /= max(1, n - 1)
            evals, evecs = np.linalg.eigh(cov)  # ascending; a subset solver is no faster at d = 3072
            evals, comps = evals[::-1][: self.dims], evecs[:, ::-1][:, : self.dims]
        signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(comps.shape[1])])
        self.mean_ = mean
        self.components_ = comps * np.where(signs == 0, 1.0, signs)
        self.explained_variance_ = np.maximum(evals, 0.0)
        self.dim_ = d
        log.debug("PCA %d -> %d dims on %d rows; top variance %.4g", d, self.dims, n, self.explained_variance_[0])
        return self

    def transform(self, x: np.ndarray, dims: int | None = None, dtype=np.float32) -> np.ndarray:
        """Projections of centred ``x`` on the first ``dims`` (default all) components: ``dtype[n, dims]``."""
        x = self._check_input(x)
        dims = self.dims if dims is None else int(dims)
        if not 0 < dims <= self.dims:
            raise ValueError(f"this PCA has {self.dims} components, asked for {dims}")
        return _project(x, self.mean_, self.components_[:, :dims], dtype)


def _pca_for(x: np.ndarray, dims: int, pca: PCA | None) -> PCA:
    """``pca`` if it was fitted with at least ``dims`` components on ``x``'s width, else a new PCA fitted on ``x``."""
    if pca is None:
        return PCA(dims).fit(x)
    if pca.dim_ is None:
        raise ValueError("the pca given is not fitted")
    if pca.dims < dims or pca.dim_ != x.shape[1]:
        raise ValueError(
            f"the pca given has {pca.dims} components of {pca.dim_}-d vectors; "
            f"need {dims} components of {x.shape[1]}-d vectors"
        )
    return pca


# ---------------------------------------------------------------------------------------------------- encoders


class LSH(_Fitted):
    """Random-hyperplane LSH: bit i = [(x - mean_train) . w_i > 0], w_i ~ N(0, I) drawn from ``seed``."""

    def __init__(self, bits: int, *, seed: int = 0):
        if bits <= 0:
            raise ValueError(f"bits must be positive, got {bits}")
        self.bits, self.seed = int(bits), int(seed)

    def fit(self, x: np.ndarray) -> LSH:
        x = _check_2d(x, "x_train")
        self.mean_ = _mean(x)
        self.planes_ = np.random.default_rng(self.seed).standard_normal((x.shape[1], self.bits)).astype(np.float32)
        self.dim_ = x.shape[1]
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        return pack_bits(_project(x, self.mean_, self.planes_) > 0)


class PCAH(_Fitted):
    """PCA hashing: bit i = [i-th principal projection of the centred vector > 0]."""

    def __init__(self, bits: int, *, seed: int = 0):
        if bits <= 0:
            raise ValueError(f"bits must be positive, got {bits}")
        self.bits, self.seed = int(bits), int(seed)  # seed unused: PCA is deterministic; kept for a uniform API

    def fit(self, x: np.ndarray, *, pca: PCA | None = None) -> PCAH:
        x = _check_2d(x, "x_train")
        self.pca_ = _pca_for(x, self.bits, pca)
        self.dim_ = x.shape[1]
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        return pack_bits(self.pca_.transform(x, self.bits) > 0)


class PCAITQ(_Fitted):
    """PCA to ``bits`` dims, then ITQ: minimise ``||B - V R||_F^2`` over codes ``B`` in {-1, 1} and orthogonal ``R``.

    Follows Gong & Lazebnik's reference ``ITQ.m``: R starts as the left singular vectors of a Gaussian matrix; each
    iteration sets ``B = sign(V R)`` (0 counts as +1), then ``R = U_A U_B^T`` from the SVD ``B^T V = U_B S U_A^T``
    (orthogonal Procrustes). ``loss_`` holds the quantisation loss ``||sign(V R) - V R||_F^2 / n`` for the initial
    rotation and after each of the ``n_iter`` updates; it never increases.
    """

    def __init__(self, bits: int, *, n_iter: int = 50, seed: int = 0):
        if bits <= 0:
            raise ValueError(f"bits must be positive, got {bits}")
        if n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {n_iter}")
        self.bits, self.n_iter, self.seed = int(bits), int(n_iter), int(seed)

    @staticmethod
    def quantisation_loss(v: np.ndarray, rotation: np.ndarray) -> float:
        return PCAITQ._loss_of(v @ rotation)

    @staticmethod
    def _loss_of(z: np.ndarray) -> float:
        return float(((np.where(z >= 0, 1.0, -1.0) - z) ** 2).sum() / z.shape[0])

    def fit(self, x: np.ndarray, *, pca: PCA | None = None) -> PCAITQ:
        x = _check_2d(x, "x_train")
        self.pca_ = _pca_for(x, self.bits, pca)
        v = self.pca_.transform(x, self.bits, dtype=np.float64)  # [n, bits]
        rng = np.random.default_rng(self.seed)
        rotation = np.linalg.svd(rng.standard_normal((self.bits, self.bits)))[0]
        z = v @ rotation
        losses = [self._loss_of(z)]
        for _ in range(self.n_iter):
            b = np.where(z >= 0, 1.0, -1.0)  # fix R, update B
            u_b, _, u_a_t = np.linalg.svd(b.T @ v)  # fix B, update R: B^T V = U_B S U_A^T
            rotation = u_a_t.T @ u_b.T
            z = v @ rotation
            losses.append(self._loss_of(z))
        self.rotation_ = rotation
        self.loss_ = losses
        self.dim_ = x.shape[1]
        log.debug(
            "ITQ %d bits: quantisation loss %.4g -> %.4g in %d iterations",
            self.bits,
            losses[0],
            losses[-1],
            self.n_iter,
        )
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        return pack_bits(self.pca_.transform(x, self.bits, dtype=np.float64) @ self.rotation_ >= 0)


def spectral_modes(ranges: np.ndarray, bits: int) -> np.ndarray:
    """The ``bits`` one-dimensional eigenfunction modes of smallest eigenvalue, ``int64[bits, len(ranges)]``.

    A transcription of ``trainSH.m``: along PCA direction ``j`` with box width ``R_j``, the modes ``k = 1 ..
    ceil((bits + 1) R_j / max R) - 1`` have eigenvalue ``-(k pi / R_j)^2``; the constant mode is dropped, and modes are
    taken by increasing ``(k pi / R_j)^2``, ties in enumeration order (direction, then k; MATLAB's stable sort).
    Row ``i`` is zero except for ``k`` in the column of its direction.
    """
    ranges = np.asarray(ranges, dtype=np.float64)
    if ranges.ndim != 1 or not np.all(ranges > 0):
        raise ValueError(f"box widths must be a positive 1-d array, got {ranges}")
    max_mode = np.ceil((bits + 1) * ranges / ranges.max()).astype(np.int64)
    n_modes = int(max_mode.sum() - max_mode.size + 1)
    modes = np.ones((n_modes, ranges.size), dtype=np.int64)
    m = 1
    for j, top in enumerate(max_mode):
        modes[m : m + top - 1, j] = np.arange(2, top + 1)
        m += top - 1
    modes -= 1
    omegas = modes * (np.pi / ranges)
    eigval = -(omegas**2).sum(axis=1)
    order = np.argsort(-eigval, kind="stable")
    return modes[order[1 : bits + 1]]


class SpectralHashing(_Fitted):
    """Spectral hashing as in ``trainSH.m`` / ``compressSH.m`` (Weiss, Torralba & Fergus 2008).

    Fit: PCA to ``min(bits, d)`` dims; a box ``[a_j, b_j]`` per direction from the training minimum and maximum (minus
    and plus eps, as the reference does); modes from :func:`spectral_modes`. Encode: bit i =
    ``[prod_j sin(pi/2 + modes_ij pi / (b_j - a_j) * (x_j - a_j)) > 0]`` over the PCA projections ``x_j`` (a single
    factor per bit, since every mode is one-dimensional).
    """

    def __init__(self, bits: int, *, seed: int = 0):
        if bits <= 0:
            raise ValueError(f"bits must be positive, got {bits}")
        self.bits, self.seed = int(bits), int(seed)  # seed unused: SH is deterministic; kept for a uniform API

    def fit(self, x: np.ndarray, *, pca: PCA | None = None) -> SpectralHashing:
        x = _check_2d(x, "x_train")
        self.npca_ = min(self.bits, x.shape[1])
        self.pca_ = _pca_for(x, self.npca_, pca)
        v = self.pca_.transform(x, self.npca_, dtype=np.float64)
        eps = np.finfo(np.float64).eps
        self.mn_ = v.min(axis=0) - eps
        self.mx_ = v.max(axis=0) + eps
        self.modes_ = spectral_modes(self.mx_ - self.mn_, self.bits)
        self.dim_ = x.shape[1]
        return self

    def eigenfunctions(self, x: np.ndarray) -> np.ndarray:
        """The ``bits`` eigenfunction values ``float64[n, bits]`` whose signs are the bits (``U`` in compressSH)."""
        x = self._check_input(x)
        v = self.pca_.transform(x, self.npca_, dtype=np.float64) - self.mn_
        omegas = self.modes_ * (np.pi / (self.mx_ - self.mn_))  # [bits, npca]
        u = np.ones((v.shape[0], self.bits))
        for i in range(self.bits):
            for j in np.flatnonzero(self.modes_[i]):  # zero modes contribute sin(pi/2) = 1
                u[:, i] *= np.sin(v[:, j] * omegas[i, j] + np.pi / 2)
        return u

    def encode(self, x: np.ndarray) -> np.ndarray:
        return pack_bits(self.eigenfunctions(x) > 0)


BASELINES = {"lsh": LSH, "sh": SpectralHashing, "pcah": PCAH, "pca_itq": PCAITQ}


def make_baseline(name: str, bits: int, *, seed: int = 0):
    """An unfitted baseline by its name in :data:`BASELINES`."""
    if name not in BASELINES:
        raise ValueError(f"unknown hashing baseline {name!r}; choose from {sorted(BASELINES)}")
    return BASELINES[name](bits, seed=seed)
