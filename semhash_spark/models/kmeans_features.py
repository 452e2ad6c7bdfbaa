"""Single-layer k-means features (Coates, Lee & Ng 2011) followed by a learned binary code layer.

Features of an image: every ``patch x patch`` window (``stride`` apart) is contrast-normalised (zero mean, divided
by ``sqrt(var + 10)``, the paper's constant for 0-255 pixels), ZCA-whitened, and encoded against ``K`` k-means
centroids with the paper's "triangle" activation ``f_k = max(0, mean_j(z_j) - z_k)``, ``z_k = ||w - c_k||``. The
activations are summed over the quadrants of the image (``pool x pool`` cells), giving ``K * pool^2`` features,
then compressed by a square root (``sqrt`` keeps a few large sums from dominating distances) and standardised.

Code layer: ``bits`` linear units on the standardised features; bit = [unit > 0]. :meth:`encode` returns
``sigmoid(unit)``, so :class:`semhash_spark.models.checkpoint.Hasher`'s threshold 0.5 is the sign of the unit, as for the
autoencoders. The model takes *raw* pixels ``float[n, H * W * C]`` (HWC order, 0-255): encode and query need
nothing but the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONTRAST_EPS = 10.0  # Coates et al. 2011: patch variance + 10 (0-255 pixel scale)
IMAGES_PER_STEP = 128  # images whose patches are encoded at once: 128 x 729 x K floats


class KMeansFeatureHasher(nn.Module):
    """Raw pixels -> k-means triangle features -> binary code units (see the module docstring)."""

    def __init__(
        self, height: int, width: int, channels: int, patch: int, stride: int, centroids: int, pool: int, bits: int
    ):
        super().__init__()
        self.shape = (int(height), int(width), int(channels))
        self.patch, self.stride, self.pool, self.bits = int(patch), int(stride), int(pool), int(bits)
        self.n_centroids = int(centroids)
        if min(height, width) < patch:
            raise ValueError(f"images of {height} x {width} are smaller than the {patch} x {patch} patches")
        d = channels * patch * patch
        self.register_buffer("zca_mean", torch.zeros(d))  # whitening of contrast-normalised patches
        self.register_buffer("zca", torch.eye(d))  # [d, d], symmetric
        self.register_buffer("centroids", torch.zeros(centroids, d))  # [K, d] in the whitened space
        self.register_buffer("feature_mean", torch.zeros(self.n_features))
        self.register_buffer("feature_std", torch.ones(self.n_features))
        self.code = nn.Linear(self.n_features, bits)

    @classmethod
    def from_checkpoint(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "KMeansFeatureHasher":
        """Rebuilds a ``network: kmeans_triangle`` checkpoint (weights ``kf.*``, shape ``meta["features"]``)."""
        model = cls(**meta["features"])
        model.load_state_dict({k[len("kf.") :]: v for k, v in tensors.items() if k.startswith("kf.")})
        return model

    @property
    def n_features(self) -> int:
        return self.n_centroids * self.pool * self.pool

    def describe(self) -> dict:
        """The constructor's arguments, for ``model.json``."""
        h, w, c = self.shape
        return {
            "height": h,
            "width": w,
            "channels": c,
            "patch": self.patch,
            "stride": self.stride,
            "centroids": self.n_centroids,
            "pool": self.pool,
            "bits": self.bits,
        }

    # ------------------------------------------------------------------------------------------------ patches
    def patches(self, x: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        """Raw pixels ``[n, H*W*C]`` -> contrast-normalised patches ``[n, L, C*patch*patch]``."""
        h, w, c = self.shape
        img = x.reshape(-1, h, w, c).permute(0, 3, 1, 2).float()
        p = F.unfold(img, self.patch, stride=stride or self.stride).transpose(1, 2)  # [n, L, d]
        return contrast_normalise(p)

    def whiten(self, p: torch.Tensor) -> torch.Tensor:
        return (p - self.zca_mean) @ self.zca

    def triangle(self, w: torch.Tensor) -> torch.Tensor:
        """Whitened patches ``[..., d]`` -> triangle activations ``[..., K]``."""
        c2 = (self.centroids * self.centroids).sum(1)
        z = ((w * w).sum(-1, keepdim=True) - 2 * w @ self.centroids.T + c2).clamp_min(0).sqrt()
        return (z.mean(-1, keepdim=True) - z).clamp_min(0)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixels ``[n, H*W*C]`` -> features ``[n, K * pool^2]`` (activations summed per cell, square-rooted)."""
        return self.pooled_grids(x, (self.pool,))[0]

    def pooled_grids(self, x: torch.Tensor, pools: tuple[int, ...]) -> list[torch.Tensor]:
        """:meth:`pooled` at several pooling grids from one pass over the patches (training's candidates)."""
        out: list[list[torch.Tensor]] = [[] for _ in pools]
        for s in range(0, x.shape[0], IMAGES_PER_STEP):
            p = self.patches(x[s : s + IMAGES_PER_STEP])
            n, L, _ = p.shape
            f = self.triangle(self.whiten(p))  # [n, L, K]
            rows = (self.shape[0] - self.patch) // self.stride + 1
            f = f.transpose(1, 2).reshape(n, self.n_centroids, rows, L // rows)
            for o, g in zip(out, pools):
                o.append(F.adaptive_avg_pool2d(f, g).reshape(n, -1))  # means, not sums: same up to scale
        return [torch.cat(o).sqrt() if o else torch.zeros(0, self.n_centroids * g * g) for o, g in zip(out, pools)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised features: the code layer's input."""
        return (self.pooled(x) - self.feature_mean) / self.feature_std

    # ------------------------------------------------------------------------------------------------ codes
    def code_units(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(self.features(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixels -> code probabilities (sigmoid of the units: > 0.5 exactly where the unit is > 0)."""
        return torch.sigmoid(self.code_units(x))


def contrast_normalise(p: torch.Tensor) -> torch.Tensor:
    """Each patch (last axis) minus its mean, divided by ``sqrt(var + CONTRAST_EPS)``."""
    return (p - p.mean(-1, keepdim=True)) / torch.sqrt(p.var(-1, keepdim=True) + CONTRAST_EPS)
