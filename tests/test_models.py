"""The papers' math on real data: RBM free energy, CD-1, autoencoder gradients, code noise and binarisation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import missing_data
import torch

from semhash_spark import codes
from semhash_spark.models.autoencoder import DeepAutoencoder, deterministic_noise, id_keys
from semhash_spark.config import PretrainConfig
from semhash_spark.models.rbm import BinaryRBM, ConstrainedPoissonRBM, GaussianRBM, MomentumSGD


@pytest.fixture(scope="module")
def news_counts(shared_data):
    """Real 20 Newsgroups word counts (2000 words) for 1500 training posts."""
    from sklearn.datasets import fetch_20newsgroups
    from sklearn.feature_extraction.text import CountVectorizer

    home = shared_data / "20newsgroups" / "sklearn_data_home"
    if not home.is_dir():
        missing_data("no sklearn 20 Newsgroups cache in the data directory")
    b = fetch_20newsgroups(data_home=str(home), subset="train", download_if_missing=False)
    cv = CountVectorizer(max_features=2000, stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
    x = cv.fit_transform(b.data[:1500]).astype(np.float32).toarray()
    keep = x.sum(1) > 0
    return torch.from_numpy(x[keep]), b.target[:1500][keep]


def _train_rbm(rbm, data, epochs, lr, seed=0):
    """CD-1 with the shipped momentum schedule and weight decay (``PretrainConfig``'s defaults)."""
    pc = PretrainConfig()
    opt = MomentumSGD(rbm, weight_decay=pc.weight_decay)
    g = torch.Generator().manual_seed(seed)
    errs = []
    for epoch in range(epochs):
        perm = torch.randperm(len(data), generator=g)
        tot = 0.0
        for s in range(0, len(data), 100):
            dW, dbv, dbh, st = rbm.cd_gradients(data[perm[s : s + 100]], g)
            opt.step(
                {"W": dW, "b_v": dbv, "b_h": dbh},
                lr=lr,
                momentum=pc.momentum_start if epoch < pc.momentum_switch_epoch else pc.momentum_final,
            )
            tot += st.recon_error
        errs.append(tot)
    return errs


@pytest.mark.slow  # trains an RBM on real documents: tens of seconds
def test_poisson_rbm_free_energy_falls_on_real_documents(news_counts):
    x, _ = news_counts
    torch.manual_seed(0)
    rbm = ConstrainedPoissonRBM(x.shape[1], 200, generator=torch.Generator().manual_seed(0))
    # Documents with the same lengths but words drawn uniformly: what the model should find less probable.
    g = torch.Generator().manual_seed(1)
    noise = torch.zeros_like(x)
    for r in range(len(x)):
        idx = torch.randint(0, x.shape[1], (int(x[r].sum()),), generator=g)
        noise[r].index_add_(0, idx, torch.ones(len(idx)))
    gap_before = float(rbm.free_energy(x).mean() - rbm.free_energy(noise).mean())
    errs = _train_rbm(rbm, x, epochs=5, lr=0.01)
    gap_after = float(rbm.free_energy(x).mean() - rbm.free_energy(noise).mean())
    assert errs[-1] < errs[0], "reconstruction cross-entropy must fall"
    assert gap_after < gap_before - 1.0, (gap_before, gap_after)
    # The bottom layer must not saturate (every document getting the same code is the silent failure).
    h = rbm.mean_hidden(x)
    assert float(((h < 0.01) | (h > 0.99)).float().mean()) < 0.5
    assert float(h.std(dim=0).mean()) > 0.05


def test_poisson_reconstruction_keeps_document_length(news_counts):
    x, _ = news_counts
    rbm = ConstrainedPoissonRBM(x.shape[1], 50, generator=torch.Generator().manual_seed(0))
    h = rbm.sample_hidden(x[:20], torch.Generator().manual_seed(0))
    v1 = rbm.mean_visible(h, x[:20])
    torch.testing.assert_close(v1.sum(1), x[:20].sum(1), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("cls", [BinaryRBM, ConstrainedPoissonRBM, GaussianRBM])
def test_free_energy_gradient_matches_finite_differences(cls):
    torch.manual_seed(0)
    rbm = cls(7, 5, init_std=0.3, generator=torch.Generator().manual_seed(3)).double()
    v = torch.rand(4, 7, dtype=torch.float64) * (3 if cls is ConstrainedPoissonRBM else 1)
    W = rbm.W.detach().clone().requires_grad_(True)
    # dF/dW analytically: -v^T sigmoid(vW + c) (summed over the batch)
    analytic = -(v.T @ torch.sigmoid(v @ rbm.W + rbm.b_h))
    eps = 1e-6
    numeric = torch.zeros_like(W)
    for i in range(7):
        for j in range(5):
            rbm.W.data[i, j] += eps
            fp = rbm.free_energy(v).sum()
            rbm.W.data[i, j] -= 2 * eps
            fm = rbm.free_energy(v).sum()
            rbm.W.data[i, j] += eps
            numeric[i, j] = (fp - fm) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-6)


def test_cd_positive_phase_is_minus_free_energy_gradient():
    rbm = BinaryRBM(6, 4, init_std=0.5, generator=torch.Generator().manual_seed(0)).double()
    v = (torch.rand(8, 6, dtype=torch.float64) > 0.5).double()
    W = rbm.W.detach().clone().requires_grad_(True)
    fe = (-(v @ rbm.b_v) - torch.nn.functional.softplus(v @ W + rbm.b_h).sum(1)).mean()
    (grad,) = torch.autograd.grad(fe, W)
    positive = v.T @ rbm.mean_hidden(v) / len(v)
    torch.testing.assert_close(-grad, positive)


@pytest.mark.parametrize("output,code_mode", [("softmax", "noise"), ("linear", "round"), ("sigmoid", "noise")])
def test_autoencoder_gradients_match_finite_differences(output, code_mode):
    torch.manual_seed(0)
    ae = DeepAutoencoder([6, 5, 3], output=output, code_mode=code_mode).double()
    if code_mode == "round":
        ae.eval()  # rounding has no useful derivative: check the smooth network
    x = torch.rand(4, 6, dtype=torch.float64) * (5 if output == "softmax" else 1)
    noise = torch.randn(4, 3, dtype=torch.float64) if code_mode == "noise" else None

    params = tuple(p.detach().clone().requires_grad_(True) for p in ae.parameters())
    assert torch.autograd.gradcheck(lambda *ps: _loss(ae, ps, x, noise), params, eps=1e-6, atol=1e-5)


def _loss(ae, params, x, noise):
    names = [n for n, _ in ae.named_parameters()]
    out = torch.func.functional_call(ae, dict(zip(names, params)), (x, noise))
    return ae.loss(x, out)


def test_straight_through_rounding_forward_binary_backward_identity():
    ae = DeepAutoencoder([4, 3, 2], output="linear", code_mode="round")
    ae.train()
    x = torch.rand(5, 4, requires_grad=True)
    a = ae.code_input(x)
    p = torch.sigmoid(a)
    from semhash_spark.models.autoencoder import _RoundST

    r = _RoundST.apply(p)
    assert set(r.detach().unique().tolist()) <= {0.0, 1.0}
    (g,) = torch.autograd.grad(r.sum(), p)
    torch.testing.assert_close(g, torch.ones_like(p))


def test_deterministic_noise_is_fixed_per_example_and_gaussian():
    keys = id_keys([f"doc{i}" for i in range(4000)])
    n1 = deterministic_noise(keys, 64, 4.0)
    n2 = deterministic_noise(keys[::-1].copy(), 64, 4.0).flip(0)
    torch.testing.assert_close(n1, n2)  # depends on the id, not the batch or its order
    assert abs(float(n1.mean())) < 0.05
    assert abs(float(n1.std()) - 4.0) < 0.05  # variance 16
    assert not torch.equal(deterministic_noise(keys, 64, 4.0, seed=1), n1)
    # Units of one example are uncorrelated
    c = np.corrcoef(n1[:, 0].numpy(), n1[:, 1].numpy())[0, 1]
    assert abs(c) < 0.05


def test_binarize_and_pack_agree_with_code_format():
    p = torch.tensor([[0.9, 0.1, 0.51, 0.49, 1.0, 0.0, 0.7, 0.2, 0.6]])
    bits = DeepAutoencoder.binarize(p).numpy()
    assert bits.tolist() == [[1, 0, 1, 0, 1, 0, 1, 0, 1]]
    packed = codes.pack_bits(bits)
    assert packed.tolist() == [[0b10101010, 0b10000000]]  # MSB first, trailing bits zero
    np.testing.assert_array_equal(codes.unpack_bits(packed, 9), bits)


def test_unrolled_autoencoder_reproduces_rbm_stack(news_counts):
    x, _ = news_counts
    g = torch.Generator().manual_seed(0)
    rbms = [ConstrainedPoissonRBM(2000, 30, init_std=0.05, generator=g), BinaryRBM(30, 8, init_std=0.3, generator=g)]
    ae = DeepAutoencoder.from_rbms(rbms)
    expected = rbms[1].mean_hidden(rbms[0].mean_hidden(x[:10]))
    torch.testing.assert_close(ae.encode(x[:10]), expected)
    torch.testing.assert_close(ae.decoder[0].weight, rbms[1].W)
