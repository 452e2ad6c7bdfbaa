"""The deep autoencoder unrolled from a stack of RBMs (Hinton & Salakhutdinov 2006; Semantic Hashing 2008).

Encoder weights are the RBMs' ``W``; decoder weights start as their transposes and are fine-tuned separately.
Documents: the output layer is a softmax over the vocabulary and the loss is the cross-entropy of the
normalised word distribution; deterministic Gaussian noise is added to the code units' inputs during
fine-tuning so that they learn to be binary (Semantic Hashing, sec. 3). Images: squared error on normalised
pixels, with code units rounded to 0/1 in the forward pass and the rounding ignored in the backward pass
(straight-through; Krizhevsky & Hinton 2011).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from .rbm import BinaryRBM

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def id_keys(ids) -> np.ndarray:
    """A stable 64-bit key per example id (sha1 prefix), the seed of its fixed code noise."""
    return np.array(
        [int.from_bytes(hashlib.sha1(str(i).encode()).digest()[:8], "little") for i in ids], dtype=np.uint64
    )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def deterministic_noise(keys: np.ndarray, width: int, std: float, seed: int = 0) -> torch.Tensor:
    """Gaussian noise ``[len(keys), width]`` that depends only on (key, unit, seed): fixed per example.

    Counter-based (splitmix64 -> two uniforms -> Box-Muller), so every rank and every epoch sees the same noise
    for the same document without storing it.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = keys[:, None] * np.uint64(2 * width + 1) + np.uint64(seed) * np.uint64(0x632BE59BD9B4E019)
        ctr = base + np.arange(2 * width, dtype=np.uint64)[None, :]
    u = (_splitmix64(ctr) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    u1 = np.clip(u[:, :width], 1e-12, 1.0)
    u2 = u[:, width:]
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return torch.from_numpy((std * z).astype(np.float32))


class _RoundST(torch.autograd.Function):
    """Round to 0/1 forward, identity backward (straight-through)."""

    @staticmethod
    def forward(ctx, p):
        return (p > 0.5).to(p.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class DeepAutoencoder(torch.nn.Module):
    """``sizes = [n_input, h1, ..., bits]``; ``output`` is ``softmax`` (documents), ``linear`` or ``sigmoid``."""

    def __init__(self, sizes: list[int], output: str = "softmax", code_mode: str = "noise"):
        super().__init__()
        if output not in ("softmax", "linear", "sigmoid"):
            raise ValueError(f"unknown output kind {output!r}")
        if code_mode not in ("noise", "round"):
            raise ValueError(f"unknown code mode {code_mode!r}")
        self.sizes, self.output, self.code_mode = list(sizes), output, code_mode
        self.encoder = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        rev = sizes[::-1]
        self.decoder = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(rev[:-1], rev[1:]))

    @property
    def bits(self) -> int:
        return self.sizes[-1]

    @classmethod
    def from_rbms(cls, rbms: list[BinaryRBM], output: str = "softmax", code_mode: str = "noise") -> "DeepAutoencoder":
        """Unrolls a greedily pretrained stack: encoder layer i = rbm i (W, b_h), decoder = transposes (W^T, b_v)."""
        sizes = [rbms[0].n_visible] + [r.n_hidden for r in rbms]
        ae = cls(sizes, output=output, code_mode=code_mode)
        with torch.no_grad():
            for layer, rbm in zip(ae.encoder, rbms):
                layer.weight.copy_(rbm.W.T)
                layer.bias.copy_(rbm.b_h)
            for layer, rbm in zip(ae.decoder, reversed(rbms)):
                layer.weight.copy_(rbm.W)
                layer.bias.copy_(rbm.b_v)
        return ae

    def code_input(self, x: torch.Tensor) -> torch.Tensor:
        """Total input to the code units ``[B, bits]``."""
        h = x
        for layer in self.encoder[:-1]:
            h = torch.sigmoid(layer(h))
        return self.encoder[-1](h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Code-unit probabilities ``[B, bits]`` (deterministic, no noise): what gets thresholded."""
        return torch.sigmoid(self.code_input(x))

    @staticmethod
    def binarize(p: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        return (p > threshold).to(torch.uint8)

    def decode_logits(self, code: torch.Tensor) -> torch.Tensor:
        h = code
        for layer in self.decoder[:-1]:
            h = torch.sigmoid(layer(h))
        return self.decoder[-1](h)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Output-layer pre-activations, with the training-time code treatment applied."""
        a = self.code_input(x)
        if noise is not None:
            a = a + noise
        p = torch.sigmoid(a)
        if self.code_mode == "round" and self.training:
            p = _RoundST.apply(p)
        return self.decode_logits(p)

    def loss(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Documents: cross-entropy of the normalised word distribution; images: squared error."""
        if self.output == "softmax":
            target = x / x.sum(dim=1, keepdim=True).clamp_min(1.0)
            return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        if self.output == "sigmoid":
            return F.binary_cross_entropy_with_logits(logits, x)
        return 0.5 * ((logits - x) ** 2).sum(dim=1).mean()
