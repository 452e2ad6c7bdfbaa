"""Image queries against a published image index: pixels or image files -> codes with the index's own model.

- ``k`` / ``radius`` / ``address_radius``: as for documents (:mod:`semhash_spark.index.query`): exact Hamming kNN or ball
  on the ranking code, or the address ball of the paper's semantic-hashing memory lookup.
- ``msh=True``: multiple semantic hashing (:mod:`semhash_spark.models.msh`) with the patch model and patch codes stored
  in the version: every image found by a radius-3 lookup of any of the query's 81 glimpses scores ``2^(3-d)``,
  summed over glimpses; results are ordered by score, then by the full code's Hamming distance (the 256-bit
  ranking of the paper when the index holds 256-bit codes). Images no glimpse found are not returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semhash_spark import codes as C
from semhash_spark.index import query as Q
from semhash_spark.config import ImagesConfig
from semhash_spark.data.images import decode_image
from semhash_spark.index.published import load_version_model
from semhash_spark.models.inference import Encoder
from semhash_spark.index.lookup import Searcher


class NotAnImage(ValueError):
    """Query bytes that are no decodable image: ``.index`` is the query's position, ``.reason`` the decoder's."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"query image {index}: {reason}")
        self.index, self.reason = index, reason


def query_images_config(hasher: Encoder) -> ImagesConfig:
    """The image size an image model reads (its dataset's height, width and channels)."""
    d = hasher.meta["data"]
    return ImagesConfig(height=d["height"], width=d["width"], channels=d["channels"])


def decode_query_images(blobs: list[bytes], cfg: ImagesConfig) -> np.ndarray:
    """The image modality's query featuriser, for the library, the CLI and the service: image file bytes (any
    format and mode prepare accepts) -> uint8 [n, H, W, C] resized as at prepare time."""
    out = []
    for i, b in enumerate(blobs):
        try:
            out.append(decode_image(b, None, cfg))
        except ValueError as e:
            raise NotAnImage(i, str(e)) from None
    return np.stack(out)


@dataclass
class ImageSearcher(Searcher):
    """:class:`semhash_spark.index.lookup.Searcher` with image inputs: the same open, kNN, balls and address model."""

    images_cfg: ImagesConfig | None = None
    patch_hasher: Encoder | None = None
    _patches: Q.PatchTable | None = field(default=None, repr=False)

    @classmethod
    def open(cls, index_uri: str, version: str | None = None) -> "ImageSearcher":
        self = super().open(index_uri, version)
        manifest, version = self.index.manifest, self.index.version
        if manifest.get("kind") != "images":
            raise ValueError(f"{index_uri!r} (version {version}) is not an image index; query it with --text")
        data = self.hasher.meta["data"]
        icfg = dict(self.hasher.meta["config"]["images"])
        if manifest.get("patches"):
            self.patch_hasher = load_version_model(index_uri, version, manifest, manifest["patches"]["model"])
            pc = self.patch_hasher.meta["config"]["images"]
            icfg.update(patch_side=pc["patch_side"], patch_fovea=pc["patch_fovea"])
        icfg.update(height=data["height"], width=data["width"], channels=data["channels"])
        self.images_cfg = ImagesConfig(**icfg)
        return self

    # -- inputs ---------------------------------------------------------------------------------------------------
    def load_images(self, blobs: list[bytes]) -> np.ndarray:
        """Image file bytes -> uint8 [n, H, W, C] at the index's size (:func:`decode_query_images`)."""
        return decode_query_images(blobs, self.images_cfg)

    def codes(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels)
        return self.hasher.codes(pixels.reshape(len(pixels), -1))

    # -- lookup ---------------------------------------------------------------------------------------------------
    def search_images(
        self,
        pixels: np.ndarray,
        *,
        k: int | None = 10,
        radius: int | None = None,
        address_radius: int | None = None,
        msh_lookup: bool = False,
    ) -> list[list[dict[str, Any]]]:
        """``k`` / ``radius`` on the ranking code, ``address_radius`` the address ball (:mod:`semhash_spark.index.query`),
        or multiple semantic hashing with ``msh_lookup``."""
        pixels = np.asarray(pixels, dtype=np.uint8)
        if pixels.ndim == 3:
            pixels = pixels[None]
        q = self.codes(pixels)
        if msh_lookup:
            return self._search_msh(pixels, q, k)
        addresses = None
        if address_radius is not None and self.address_hasher is not None:
            addresses = C.prefix(self.address_hasher.codes(pixels.reshape(len(pixels), -1)), self.address_hasher.bits)
        return self.search_codes(q, k=k, radius=radius, address_radius=address_radius, addresses=addresses)

    def patch_table(self) -> Q.PatchTable:
        """The version's patch table and model for multiple semantic hashing, read once."""
        if self.patch_hasher is None:
            raise ValueError("this index has no patch codes: encode with --patch-model for multiple semantic hashing")
        if self._patches is None:
            ix = self.index
            self._patches = Q.PatchTable.read(ix.index_uri, ix.version, ix.manifest, self.hasher, self.patch_hasher)
        return self._patches

    def _search_msh(self, pixels: np.ndarray, q: np.ndarray, k: int | None) -> list[list[dict[str, Any]]]:
        return Q.msh_hits(self.patch_table(), pixels, q, k)
