"""Image queries against a published image index: pixels or image files -> codes with the index's own model.

- ``k`` / ``radius``: as for documents (:mod:`semhash_spark.lookup`): exact Hamming kNN on the full code, or the
  address ball of the paper's semantic-hashing memory lookup.
- ``msh=True``: multiple semantic hashing (:mod:`semhash_spark.msh`) with the patch model and patch codes stored
  in the version: every image found by a radius-3 lookup of any of the query's 81 glimpses scores ``2^(3-d)``,
  summed over glimpses; results are ordered by score, then by the full code's Hamming distance (the 256-bit
  ranking of the paper when the index holds 256-bit codes). Images no glimpse found are not returned.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import codes as C
from . import msh
from .checkpoint import Hasher
from .config import ImagesConfig
from .images import decode_image
from .index import HammingIndex, load_version_model, read_current, read_manifest


class NotAnImage(ValueError):
    """Query bytes that are no decodable image."""


@dataclass
class ImageSearcher:
    index: HammingIndex
    hasher: Hasher
    images_cfg: ImagesConfig
    patch_hasher: Hasher | None = None
    _patches: tuple | None = field(default=None, repr=False)

    @classmethod
    def open(cls, index_uri: str, version: str | None = None) -> "ImageSearcher":
        version = version or read_current(index_uri)["version"]
        manifest = read_manifest(index_uri, version)
        if manifest.get("kind") != "images":
            raise ValueError(f"{index_uri!r} (version {version}) is not an image index; query it with --text")
        index = HammingIndex.open(index_uri, version=version)
        hasher = load_version_model(index_uri, version, manifest)          # checked against the manifest
        data = hasher.meta["data"]
        icfg = dict(hasher.meta["config"]["images"])
        patch_hasher = None
        if manifest.get("patches"):
            patch_hasher = load_version_model(index_uri, version, manifest, manifest["patches"]["model"])
            pc = patch_hasher.meta["config"]["images"]
            icfg.update(patch_side=pc["patch_side"], patch_fovea=pc["patch_fovea"])
        icfg.update(height=data["height"], width=data["width"], channels=data["channels"])
        return cls(index, hasher, ImagesConfig(**icfg), patch_hasher)

    # -- inputs ---------------------------------------------------------------------------------------------------
    def load_images(self, blobs: list[bytes]) -> np.ndarray:
        """Image file bytes (any format and mode prepare accepts) -> uint8 [n, H, W, C] at the index's size."""
        out = []
        for i, b in enumerate(blobs):
            try:
                out.append(decode_image(b, None, self.images_cfg))
            except ValueError as e:
                raise NotAnImage(f"query image {i}: {e}") from None
        return np.stack(out)

    def codes(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels)
        return self.hasher.codes(pixels.reshape(len(pixels), -1))

    # -- lookup ---------------------------------------------------------------------------------------------------
    def search_images(self, pixels: np.ndarray, *, k: int | None = 10, radius: int | None = None,
                      msh_lookup: bool = False) -> list[list[dict[str, Any]]]:
        pixels = np.asarray(pixels, dtype=np.uint8)
        if pixels.ndim == 3:
            pixels = pixels[None]
        q = self.codes(pixels)
        if msh_lookup:
            return self._search_msh(pixels, q, k)
        if radius is None and not k:
            raise ValueError("give radius and/or k")
        if radius is not None:
            lims, D, I = self.index.address_lookup(q, radius)
            lists = [(D[lims[i]:lims[i + 1]], I[lims[i]:lims[i + 1]]) for i in range(len(q))]
            lists = [(d[:k], i[:k]) if k else (d, i) for d, i in lists]
        else:
            D, I = self.index.search(q, k)
            lists = [(D[i][I[i] >= 0], I[i][I[i] >= 0]) for i in range(len(q))]
        return [[{"id": x, "distance": int(dd)} for x, dd in zip(self.index.ids_of(i), d)] for d, i in lists]

    def patch_index(self) -> tuple[np.ndarray, np.ndarray, msh.PatchIndex]:
        """(ids, long codes, PatchIndex) of the version's patch table, read once."""
        if self.patch_hasher is None:
            raise ValueError("this index has no patch codes: encode with --patch-model for multiple semantic hashing")
        if self._patches is None:
            from .image_encode import read_patch_table

            ids, codes, patches = read_patch_table(self.index.index_uri, self.index.version, self.index.manifest)
            self._patches = (ids, codes, msh.PatchIndex.build(patches, self.patch_hasher.bits))
        return self._patches

    def _search_msh(self, pixels: np.ndarray, q: np.ndarray, k: int | None) -> list[list[dict[str, Any]]]:
        ids, long_codes, pindex = self.patch_index()
        qp = msh.patch_codes(self.patch_hasher, pixels, self.images_cfg)
        out = []
        for r in range(len(pixels)):
            scores = pindex.scores(qp[r])
            found = np.flatnonzero(scores > 0)
            d = C.hamming(q[r:r + 1], long_codes[found])[0] if len(found) else np.zeros(0, np.int64)
            s = scores[found]
            order = np.lexsort((found, d, -s))
            order = order[:k] if k else order
            out.append([{"id": ids[found[j]], "score": float(s[j]), "distance": int(d[j])} for j in order])
        return out
