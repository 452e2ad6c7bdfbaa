"""Multiple semantic hashing (Krizhevsky & Hinton 2011, sec. 4): 81 retina-like glimpses per image, each hashed
to a short code; a query's glimpses look up database glimpses within Hamming radius 3 and every image found
scores ``2^(3-d)``; scores are summed over the query's glimpses and combined with the long-code ranking.

Glimpse sampling (our reading of the paper's "retina-like" patches; exact numbers are ours):

- A glimpse is a ``side x side`` grid (16 x 16 by default) of samples around a centre. Along each axis the
  central ``fovea`` samples (8) are one pixel apart (full resolution, offsets -4..3); the
  ``(side - fovea) / 2`` samples on each side (4) are two pixels apart (offsets -12, -10, -8, -6 and 4, 6, 8, 10)
  and each is the mean of the 2x2 block starting there (half resolution). A sample outside the image repeats
  the edge pixel. So a glimpse tiles the 24 x 24 pixels -12..11 around its centre, the central 8 x 8 sharply.
- The 81 centres are a 9 x 9 grid spanning the middle half of the image (rows and columns at
  ``round(linspace(H/4, 3H/4, 9))``: 8, 10, ..., 24 for 32 x 32), so neighbouring glimpses are shifted by
  2 pixels: together they cover translations of the object. Glimpse 40 is the image centre.

Lookup: :class:`PatchIndex` keeps every database glimpse code (28-bit integers, sorted) with its image ordinal;
a query glimpse's Hamming ball of radius 3 (3,683 codes for 28 bits) is looked up by binary search. An image
scores, per query glimpse, ``2^(3-d)`` for its nearest glimpse in the ball; scores add up over the 81 query
glimpses. :func:`rank` orders images by score (descending), then by the long-code Hamming distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semhash_spark import codes as C
from semhash_spark.config import ImagesConfig

GRID = 9
N_PATCHES = GRID * GRID  # 81
CENTRE = N_PATCHES // 2  # the glimpse at the image centre
RADIUS = 3


def axis_offsets(side: int, fovea: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample offsets along one axis and whether each is in the (full-resolution) fovea."""
    if side <= 0 or fovea <= 0 or fovea > side or (side - fovea) % 2:
        raise ValueError(f"images.patch_side={side} and patch_fovea={fovea}: need 0 < fovea <= side, side - fovea even")
    ring = (side - fovea) // 2
    centre = np.arange(-(fovea // 2), fovea - fovea // 2)
    left = centre[0] - 2 * np.arange(ring, 0, -1)
    right = centre[-1] + 1 + 2 * np.arange(ring)
    offsets = np.concatenate([left, centre, right])
    fov = np.zeros(side, dtype=bool)
    fov[ring : ring + fovea] = True
    return offsets, fov


def centres(n: int) -> np.ndarray:
    return np.round(np.linspace(n / 4, 3 * n / 4, GRID)).astype(int)


def describe(cfg: ImagesConfig) -> dict:
    off, fov = axis_offsets(cfg.patch_side, cfg.patch_fovea)
    return {
        "patches": N_PATCHES,
        "side": cfg.patch_side,
        "fovea": cfg.patch_fovea,
        "offsets": off.tolist(),
        "centres_y": centres(cfg.height).tolist(),
        "centres_x": centres(cfg.width).tolist(),
        "radius": RADIUS,
    }


def glimpses(images: np.ndarray, cfg: ImagesConfig) -> np.ndarray:
    """float/uint8 [B, H, W, C] -> float32 [B, 81, side * side * C] retina glimpses (see the module notes)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected images [B, H, W, C], got shape {x.shape}")
    b, h, w, c = x.shape
    # 2x2 box average (half resolution), aligned so that blurred[y, x] averages rows y, y+1 and columns x, x+1.
    pad = np.concatenate([x, x[:, -1:]], axis=1)
    pad = np.concatenate([pad, pad[:, :, -1:]], axis=2)
    blurred = 0.25 * (pad[:, :-1, :-1] + pad[:, 1:, :-1] + pad[:, :-1, 1:] + pad[:, 1:, 1:])
    off, fov = axis_offsets(cfg.patch_side, cfg.patch_fovea)
    cy, cx = centres(h), centres(w)
    ys = np.clip(cy[:, None] + off[None, :], 0, h - 1)  # [9, side]
    xs = np.clip(cx[:, None] + off[None, :], 0, w - 1)
    gy = np.repeat(ys, GRID, axis=0)  # [81, side]: row-major over the 9 x 9 centres
    gx = np.tile(xs, (GRID, 1))
    sharp = x[:, gy[:, :, None], gx[:, None, :]]  # [B, 81, side, side, C]
    soft = blurred[:, gy[:, :, None], gx[:, None, :]]
    both = (fov[:, None] & fov[None, :])[None, None, :, :, None]
    out = np.where(both, sharp, soft)
    return out.reshape(b, N_PATCHES, -1)


def patch_codes(hasher, images: np.ndarray, cfg: ImagesConfig, batch: int = 128) -> np.ndarray:
    """Images [B, H, W, C] -> packed glimpse codes uint8 [B, 81, code_bytes] with the patch model."""
    out = []
    for s in range(0, len(images), batch):
        g = glimpses(images[s : s + batch], cfg)
        n = g.shape[0]
        out.append(hasher.codes(g.reshape(n * N_PATCHES, -1)).reshape(n, N_PATCHES, -1))
    return np.concatenate(out) if out else np.zeros((0, N_PATCHES, C.code_bytes(hasher.bits)), np.uint8)


@dataclass
class PatchIndex:
    """Every database glimpse code as an integer, sorted, with the ordinal of its image."""

    keys: np.ndarray  # uint64 [N * 81], ascending
    images: np.ndarray  # int64 [N * 81]
    bits: int
    count: int  # number of images

    @classmethod
    def build(cls, patch_codes_: np.ndarray, bits: int, ordinals: np.ndarray | None = None) -> "PatchIndex":
        """``patch_codes_`` uint8 [N, 81, code_bytes]; ``ordinals`` (default 0..N-1) name the images."""
        n = patch_codes_.shape[0]
        keys = C.prefix(patch_codes_.reshape(n * patch_codes_.shape[1], -1), bits)
        ords = np.arange(n) if ordinals is None else np.asarray(ordinals, dtype=np.int64)
        imgs = np.repeat(ords, patch_codes_.shape[1])
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], imgs[order].astype(np.int64), bits, n)

    def scores(self, query_patch_codes: np.ndarray, radius: int = RADIUS) -> np.ndarray:
        """One query's glimpse codes uint8 [81, code_bytes] -> float64 [count]: summed 2^(radius - d) per image.

        Per query glimpse an image counts once, at its nearest glimpse within ``radius``.
        """
        total = np.zeros(self.count, dtype=np.float64)
        for q in C.prefix(query_patch_codes, self.bits):
            ball = C.hamming_ball(int(q), self.bits, radius)  # ordered by distance from q
            lo = np.searchsorted(self.keys, ball, side="left")
            hi = np.searchsorted(self.keys, ball, side="right")
            lengths = hi - lo
            hit = lengths > 0
            if not hit.any():
                continue
            lo, lengths = lo[hit], lengths[hit]
            d_ball = C.int_hamming(ball[hit], int(q))
            starts = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
            rows = starts + np.arange(lengths.sum())
            imgs, d = self.images[rows], np.repeat(d_ball, lengths)
            order = np.lexsort((d, imgs))  # by image, nearest first
            imgs, d = imgs[order], d[order]
            first = np.concatenate([[True], imgs[1:] != imgs[:-1]])
            total[imgs[first]] += np.exp2(radius - d[first].astype(np.float64))
        return total


def rank(scores: np.ndarray, long_distances: np.ndarray | None, k: int | None = None) -> np.ndarray:
    """Image ordinals by MSH score (descending), ties (and unscored images) by long-code distance, then ordinal."""
    scores = np.asarray(scores, dtype=np.float64)
    d = np.zeros(len(scores)) if long_distances is None else np.asarray(long_distances, dtype=np.float64)
    order = np.lexsort((np.arange(len(scores)), d, -scores))
    return order[:k] if k else order
