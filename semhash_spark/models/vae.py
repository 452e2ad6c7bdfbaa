"""A Bernoulli-latent variational document hasher (NASH, Shen et al. 2018) with neighbour targets (NbrReg-style).

Training: an MLP encoder gives each code bit a probability ``q``; the bits are *sampled* from ``q`` in the forward
pass and the sampling is ignored in the backward pass (straight-through with data-dependent noise), and a softmax
decoder over the vocabulary reconstructs a target word distribution from the bits: the document's own words mixed
with those of its TF-IDF nearest training neighbours (weak supervision). A KL term towards Bernoulli(0.5), a batch
bit-balance term and a decorrelation term keep the bits used and independent.

Query time (:class:`CodeEncoder`) is a fixed input transform (log term frequency times idf, L2-normalised) followed
by a plain stack of (weight, bias, activation) layers ending in a sigmoid, thresholded at 0.5: ``model.json``
describes it under ``encoder`` so any runtime can rebuild it without this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "identity": lambda x: x}
INPUT_TRANSFORM = "log1p_idf_l2"  # x -> l2_normalise(log(1 + counts) * idf)


class CodeEncoder(torch.nn.Module):
    """Word counts ``[B, V]`` -> code-unit probabilities ``[B, bits]``; the code is ``probabilities > 0.5``."""

    def __init__(self, sizes: list[int], activations: list[str], idf: torch.Tensor | None = None):
        super().__init__()
        if len(activations) != len(sizes) - 1:
            raise ValueError(f"{len(sizes) - 1} layers need as many activations, got {activations}")
        unknown = [a for a in activations if a not in ACTIVATIONS]
        if unknown:
            raise ValueError(f"unknown activation {unknown[0]!r}; known: {sorted(ACTIVATIONS)}")
        if activations[-1] != "sigmoid":
            raise ValueError("the code layer's activation must be sigmoid (codes are probabilities > 0.5)")
        self.sizes, self.activations = list(sizes), list(activations)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.register_buffer("idf", idf.float().clone() if idf is not None else torch.ones(sizes[0]))
        self.gain = 1.0  # training-time input gain, folded into the first layer before saving

    @torch.no_grad()
    def fold_gain(self) -> None:
        """Moves the input gain into the first layer's weights (the same codes, a plain stack again)."""
        self.layers[0].weight.mul_(self.gain)
        self.gain = 1.0

    @property
    def bits(self) -> int:
        return self.sizes[-1]

    def features(self, counts: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(counts.clamp_min(0)) * self.idf
        return x * (self.gain / x.norm(dim=1, keepdim=True).clamp_min(1e-8))

    def code_input(self, counts: torch.Tensor) -> torch.Tensor:
        """Logits of the code units (the last layer's pre-activation)."""
        h = self.features(counts)
        for layer, act in zip(self.layers[:-1], self.activations[:-1]):
            h = ACTIVATIONS[act](layer(h))
        return self.layers[-1](h)

    def encode(self, counts: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.code_input(counts))

    @torch.no_grad()
    def widened(self, vocab_size: int) -> "CodeEncoder":
        """The same codes over a vocabulary that extends this one's ``sizes[0]`` words: the extra words get idf 0
        and zero weights, so a model trained on the most frequent words reads the dataset's full count rows."""
        extra = vocab_size - self.sizes[0]
        if extra < 0:
            raise ValueError(f"cannot narrow a {self.sizes[0]}-word encoder to {vocab_size} words")
        if extra == 0:
            return self
        enc = CodeEncoder([vocab_size, *self.sizes[1:]], self.activations)
        state = self.state_dict()
        state["idf"] = torch.nn.functional.pad(state["idf"], (0, extra))
        state["layers.0.weight"] = torch.nn.functional.pad(state["layers.0.weight"], (0, extra))
        enc.load_state_dict(state)
        enc.gain = self.gain
        return enc

    def description(self) -> dict:
        """The ``encoder`` entry of ``model.json``: tensor names per layer, activations, input transform."""
        return {
            "input": INPUT_TRANSFORM,
            "input_scale": "enc.idf",
            "threshold": 0.5,
            "layers": [
                {"weight": f"enc.layers.{i}.weight", "bias": f"enc.layers.{i}.bias", "activation": a}
                for i, a in enumerate(self.activations)
            ],
        }

    @classmethod
    def from_description(cls, desc: dict, tensors: dict[str, torch.Tensor]) -> "CodeEncoder":
        if desc.get("input") != INPUT_TRANSFORM:
            raise ValueError(f"unknown encoder input transform {desc.get('input')!r}; expected {INPUT_TRANSFORM!r}")
        ws = [tensors[layer["weight"]] for layer in desc["layers"]]
        sizes = [int(ws[0].shape[1])] + [int(w.shape[0]) for w in ws]
        enc = cls(sizes, [layer["activation"] for layer in desc["layers"]], tensors[desc["input_scale"]])
        enc.load_state_dict({k[len("enc.") :]: v for k, v in tensors.items() if k.startswith("enc.")})
        return enc.eval()


class _SampleST(torch.autograd.Function):
    """Bernoulli sample forward, identity backward (straight-through with data-dependent noise)."""

    @staticmethod
    def forward(ctx, q, u):
        return (u < q).to(q.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class BernoulliHasher(torch.nn.Module):
    """The training model: :class:`CodeEncoder` plus a softmax decoder from the bits to the vocabulary."""

    def __init__(self, vocab_size: int, hidden: list[int], bits: int, activation: str, idf: torch.Tensor):
        super().__init__()
        sizes = [vocab_size, *hidden, bits]
        self.encoder = CodeEncoder(sizes, [activation] * len(hidden) + ["sigmoid"], idf)
        self.decoder = torch.nn.Linear(bits, vocab_size)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Pre-activations of unit order from the start: the L2-normalised input is scaled by sqrt(V) during training
        (with torch's default init every code bit was set by its bias alone: one address), He-initialised layers."""
        self.encoder.gain = float(self.encoder.sizes[0]) ** 0.5
        layers = self.encoder.layers
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            torch.nn.init.normal_(layer.weight, std=((1.0 if last else 2.0) / layer.in_features) ** 0.5)
            torch.nn.init.zeros_(layer.bias)

    def sample_bits(self, counts: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, bits): bits drawn from Bernoulli(q) (or thresholded), gradients passed straight through to q."""
        q = torch.sigmoid(self.encoder.code_input(counts))
        u = torch.rand_like(q) if sample else torch.full_like(q, 0.5)
        return q, _SampleST.apply(q, u)

    def forward(self, counts: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (q, bits used by the decoder, decoder log-probabilities over the vocabulary)."""
        q, b = self.sample_bits(counts, sample)
        return q, b, F.log_softmax(self.decoder(b), dim=1)


def neighbour_contrast(b: torch.Tensor, b_pos: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over the batch: each document's bits should be nearer (in Hamming terms) to its TF-IDF neighbour's
    bits ``b_pos`` than to the other documents' neighbours (RBSH-style weak supervision, as a softmax ranking)."""
    s, t = 2 * b - 1, 2 * b_pos - 1
    sim = s @ t.T / s.shape[1]  # 1 - 2 * hamming / bits, in [-1, 1]
    target = torch.arange(s.shape[0], device=s.device)
    return 0.5 * (F.cross_entropy(sim / temperature, target) + F.cross_entropy(sim.T / temperature, target))


def kl_to_half(q: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(q) || Bernoulli(0.5)) summed over the bits, averaged over the batch."""
    q = q.clamp(1e-6, 1 - 1e-6)
    return (q * torch.log(2 * q) + (1 - q) * torch.log(2 * (1 - q))).sum(1).mean()


def balance_penalty(q: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each bit's batch mean from 0.5 (scaled so a constant bit costs 1)."""
    return (4 * (q.mean(0) - 0.5) ** 2).mean()


def decorrelation_penalty(b: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal correlation of the (straight-through) bits in the batch."""
    s = 2 * b - 1
    s = s - s.mean(0, keepdim=True)
    cov = s.T @ s / max(1, s.shape[0] - 1)
    d = cov.diagonal().clamp_min(1e-6).sqrt()
    corr = cov / (d[:, None] * d[None, :])
    off = corr - torch.diag(corr.diagonal())
    n = corr.shape[0]
    return (off**2).sum() / max(1, n * (n - 1))
