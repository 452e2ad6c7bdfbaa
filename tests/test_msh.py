"""Multiple semantic hashing: glimpse geometry and scoring against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from semhash_spark import codes as C
from semhash_spark.models import msh
from semhash_spark.config import ImagesConfig


def test_axis_offsets_fovea_full_resolution_ring_half():
    off, fov = msh.axis_offsets(16, 8)
    assert off.tolist() == [-12, -10, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 10]
    assert fov.tolist() == [False] * 4 + [True] * 8 + [False] * 4
    assert np.all(np.diff(off[fov]) == 1) and np.all(np.diff(off[:4]) == 2) and np.all(np.diff(off[12:]) == 2)
    with pytest.raises(ValueError, match="patch_fovea"):
        msh.axis_offsets(16, 7)


def test_glimpses_sample_the_image_sharply_in_the_fovea_and_blurred_outside():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 32, 32, 3)).astype(np.float32)
    cfg = ImagesConfig()
    g = msh.glimpses(img, cfg)
    assert g.shape == (2, 81, 16 * 16 * 3)
    g = g.reshape(2, 81, 16, 16, 3)
    cy = msh.centres(32)
    assert cy.tolist() == [8, 10, 12, 14, 16, 18, 20, 22, 24]
    centre = g[:, msh.CENTRE]
    # Fovea: the 8 x 8 pixels around the image centre, untouched.
    np.testing.assert_array_equal(centre[:, 4:12, 4:12], img[:, 12:20, 12:20])
    # Ring sample at offsets (-12, -12): the 2x2 mean of pixels (4..5, 4..5).
    np.testing.assert_allclose(centre[:, 0, 0], img[:, 4:6, 4:6].mean(axis=(1, 2)), rtol=1e-6)
    # Glimpse (row 0, column 0) is centred at (8, 8): offsets below -8 leave the image and repeat the edge.
    corner = g[:, 0]
    np.testing.assert_allclose(corner[:, 0, 0], img[:, 0:2, 0:2].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(corner[:, 4:12, 4:12], img[:, 4:12, 4:12])
    # Neighbouring glimpses are the same retina shifted by two pixels.
    np.testing.assert_array_equal(g[:, msh.CENTRE + 1, 4:12, 4:10], g[:, msh.CENTRE, 4:12, 6:12])


def _brute_force_scores(db_patch_codes, query_patch_codes, bits, radius):
    n = db_patch_codes.shape[0]
    total = np.zeros(n)
    for qp in query_patch_codes:
        d = C.hamming(qp[None, :], db_patch_codes.reshape(-1, db_patch_codes.shape[2]))[0].reshape(n, -1)
        best = d.min(axis=1)
        hit = best <= radius
        total[hit] += 2.0 ** (radius - best[hit])
    return total


def test_patch_index_scores_equal_brute_force():
    rng = np.random.default_rng(1)
    bits, n = 28, 300
    # Clustered codes so that balls of radius 3 find something: a few centres with a few bits flipped.
    centres = rng.integers(0, 2, size=(6, bits))
    bits01 = centres[rng.integers(0, 6, size=(n, 81))]
    flips = rng.random((n, 81, bits)) < 0.04
    db = C.pack_bits((bits01 ^ flips).reshape(-1, bits)).reshape(n, 81, -1)
    index = msh.PatchIndex.build(db, bits)
    for q in range(5):
        qbits = centres[rng.integers(0, 6, size=81)] ^ (rng.random((81, bits)) < 0.04)
        qcodes = C.pack_bits(qbits)
        got = index.scores(qcodes)
        want = _brute_force_scores(db, qcodes, bits, msh.RADIUS)
        np.testing.assert_allclose(got, want)
        assert got.max() > 0
    # An image that is the query itself scores the maximum, 81 * 2^3.
    np.testing.assert_allclose(index.scores(db[7])[7], 81 * 8)


def test_rank_orders_by_score_then_long_distance():
    scores = np.array([0.0, 8.0, 8.0, 1.0])
    d = np.array([0, 5, 2, 1])
    assert msh.rank(scores, d).tolist() == [2, 1, 3, 0]
    assert msh.rank(scores, d, k=2).tolist() == [2, 1]


def test_fold_normalisation_makes_the_image_model_take_raw_pixels():
    """image_fit folds the per-pixel mean/std into the first and last layers: same codes and reconstructions."""
    import torch

    from semhash_spark.training.image_fit import fold_normalisation
    from semhash_spark.models.autoencoder import DeepAutoencoder

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ae = DeepAutoencoder([12, 6, 4], output="linear", code_mode="round").eval()
    mean = rng.uniform(50, 200, 12).astype(np.float32)
    std = rng.uniform(10, 60, 12).astype(np.float32)
    raw = torch.from_numpy(rng.uniform(0, 255, (5, 12)).astype(np.float32))
    norm = (raw - torch.from_numpy(mean)) / torch.from_numpy(std)
    with torch.no_grad():
        codes_before, out_before = ae.encode(norm), ae(norm) * torch.from_numpy(std) + torch.from_numpy(mean)
        fold_normalisation(ae, mean, std)
        codes_after, out_after = ae.encode(raw), ae(raw)
    torch.testing.assert_close(codes_after, codes_before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_after, out_before, rtol=1e-4, atol=1e-3)
