"""Restricted Boltzmann machines of the papers, trained with one step of contrastive divergence (CD-1).

- :class:`BinaryRBM`: logistic visible and hidden units (the layers above the first).
- :class:`ConstrainedPoissonRBM`: the bottom layer for word counts (Salakhutdinov & Hinton 2008, sec. 2.1):
  p(v_i = n | h) = Poisson(n, N * softmax_i(b_i + sum_j h_j w_ij)), p(h_j = 1 | v) = sigmoid(c_j + sum_i v_i w_ij),
  with N the document length. The softmax constraint makes the rates sum to N, so the model copes with
  documents of very different lengths; the hidden input is *not* scaled by N.
- :class:`GaussianRBM`: Gaussian visible units of unit variance on normalised inputs (Krizhevsky & Hinton 2011,
  first layer on pixels).

Shapes: ``v`` is ``[B, n_visible]``, ``h`` is ``[B, n_hidden]``; ``W`` is ``[n_visible, n_hidden]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CDStats:
    """Diagnostics of one CD step (plain floats, cheap to log and allreduce)."""

    recon_error: float  # mean squared error of the reconstruction (per visible unit)
    saturated: float  # fraction of hidden probabilities below 0.01 or above 0.99
    hidden_mean: float  # mean hidden activation on the data


class BinaryRBM(torch.nn.Module):
    visible_kind = "binary"

    def __init__(self, n_visible: int, n_hidden: int, init_std: float = 0.01, generator: torch.Generator | None = None):
        super().__init__()
        self.n_visible, self.n_hidden = n_visible, n_hidden
        self.W = torch.nn.Parameter(
            torch.randn(n_visible, n_hidden, generator=generator) * init_std, requires_grad=False
        )
        self.b_v = torch.nn.Parameter(torch.zeros(n_visible), requires_grad=False)
        self.b_h = torch.nn.Parameter(torch.zeros(n_hidden), requires_grad=False)

    # -- conditionals ---------------------------------------------------------------------------------------------
    def hidden_input(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.W + self.b_h

    def mean_hidden(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.hidden_input(v))

    def sample_hidden(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.mean_hidden(v)
        return (torch.rand(p.shape, generator=generator, device=p.device) < p).to(p.dtype)

    def mean_visible(self, h: torch.Tensor, v_data: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(h @ self.W.T + self.b_v)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -v.b_v - sum_j softplus(c_j + v.W_j), per example ``[B]``."""
        return -(v @ self.b_v) - F.softplus(self.hidden_input(v)).sum(dim=1)

    # -- learning -------------------------------------------------------------------------------------------------
    def cd_gradients(self, v0: torch.Tensor, generator: torch.Generator | None = None):
        """Positive minus negative statistics of CD-1 (the ascent direction of the log-likelihood).

        Returns ``(dW, db_v, db_h, stats)``, averaged over the batch.
        """
        h0 = self.mean_hidden(v0)
        h0_sample = (torch.rand(h0.shape, generator=generator, device=h0.device) < h0).to(h0.dtype)
        v1 = self.mean_visible(h0_sample, v0)
        h1 = self.mean_hidden(v1)
        n = v0.shape[0]
        # v0'h0/n - v1'h1/n as one product over the stacked batch: no [n_visible, n_hidden] temporaries
        dW = torch.mm(torch.cat([v0, v1]).T, torch.cat([h0, -h1]).mul_(1.0 / n))
        db_v = (v0 - v1).mean(dim=0)
        db_h = (h0 - h1).mean(dim=0)
        stats = CDStats(
            recon_error=float(self.reconstruction_error(v0, v1)),
            saturated=float(((h0 < 0.01) | (h0 > 0.99)).float().mean()),
            hidden_mean=float(h0.mean()),
        )
        return dW, db_v, db_h, stats

    def reconstruction_error(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        return ((v0 - v1) ** 2).mean()

    def parameters_dict(self) -> dict[str, torch.Tensor]:
        return {"W": self.W.data, "b_v": self.b_v.data, "b_h": self.b_h.data}


class ConstrainedPoissonRBM(BinaryRBM):
    """Bottom layer for word-count vectors; ``v`` holds counts, document length ``N = v.sum(1)``."""

    visible_kind = "constrained_poisson"

    def mean_visible(self, h: torch.Tensor, v_data: torch.Tensor | None = None) -> torch.Tensor:
        if v_data is None:
            raise ValueError("the constrained Poisson RBM needs the data to know each document's length")
        length = v_data.sum(dim=1, keepdim=True)
        return length * torch.softmax(h @ self.W.T + self.b_v, dim=1)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        # Up to terms constant in the parameters (log v_i!), the unnormalised Poisson free energy.
        return -(v @ self.b_v) - F.softplus(self.hidden_input(v)).sum(dim=1)

    def reconstruction_error(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        # Cross-entropy of the normalised word distributions, comparable across documents of any length.
        p = v0 / v0.sum(dim=1, keepdim=True).clamp_min(1.0)
        q = v1 / v1.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return -(p * torch.log(q.clamp_min(1e-12))).sum(dim=1).mean()


class GaussianRBM(BinaryRBM):
    """Gaussian visible units (unit variance) for normalised pixels; binary hidden units."""

    visible_kind = "gaussian"

    def mean_visible(self, h: torch.Tensor, v_data: torch.Tensor | None = None) -> torch.Tensor:
        return h @ self.W.T + self.b_v

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((v - self.b_v) ** 2).sum(dim=1) - F.softplus(self.hidden_input(v)).sum(dim=1)


RBM_KINDS = {cls.visible_kind: cls for cls in (BinaryRBM, ConstrainedPoissonRBM, GaussianRBM)}


class MomentumSGD:
    """Hinton's RBM update: velocity = m * velocity + lr * (grad - weight_decay * W); W += velocity.

    Weight decay applies to weights only, not biases (Hinton, *A Practical Guide to Training RBMs*, 2010).
    """

    def __init__(self, rbm: BinaryRBM, weight_decay: float):
        self.rbm = rbm
        self.weight_decay = weight_decay
        self.velocity = {k: torch.zeros_like(p) for k, p in rbm.parameters_dict().items()}

    def step(self, grads: dict[str, torch.Tensor], lr: float, momentum: float) -> None:
        params = self.rbm.parameters_dict()
        for name, g in grads.items():
            v = self.velocity[name].mul_(momentum).add_(g, alpha=lr)
            if name == "W" and self.weight_decay:
                v.add_(params["W"], alpha=-lr * self.weight_decay)  # in place: no temporary the size of W
            params[name].add_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"velocity.{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in self.velocity:
            self.velocity[k].copy_(state[f"velocity.{k}"])
