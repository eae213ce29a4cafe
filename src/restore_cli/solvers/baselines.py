"""Classical baselines that the diffusion methods are compared with (no learned prior).

* ``pseudo-inverse``: ``A^+ y`` for a linear task (for inpainting the zero-filled image,
  for super-resolution the minimum-norm upsampling), PiGDM's ``h^+`` for HDR and
  quantisation.  Phase retrieval has no pseudo-inverse.
* ``posterior-mean``: the exact posterior mean ``E[x | y]`` of a linear task under the
  analytic Gaussian prior (``GaussianPrior.posterior_mean``: the Wiener filter of the
  task, by CG), for example the prior fitted to Fashion-MNIST (``gaussian-fmnist``).

Both are deterministic, take no steps and evaluate no network (NFE 0).
"""

from __future__ import annotations

import torch

from .base import Result, Solver


class _Closed(Solver):
    gradient_guided = False
    defaults = {"steps": 0}

    def estimate(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run(self, y, gens, callback=None):
        with torch.no_grad():
            img = self.estimate(y).to(y.dtype)
        return Result(img.clamp(0, 1), self.prior.encode(img), 0, 0, {})


class PseudoInverse(_Closed):
    name = "pseudo-inverse"
    paper = "the measurement's pseudo-inverse A^+ y (zero-filled for inpainting)"

    def __init__(self, prior, op, diffstategrad=None, **hparams):
        super().__init__(prior, op, diffstategrad, **hparams)
        if not op.has_h_dagger:
            raise ValueError(f"{op.name} has no pseudo-inverse")

    def estimate(self, y):
        return self.op.h_dagger(y)


class PosteriorMean(_Closed):
    name = "posterior-mean"
    paper = "the exact posterior mean under the analytic Gaussian prior (Wiener filter)"
    linear_only = True

    def __init__(self, prior, op, diffstategrad=None, **hparams):
        super().__init__(prior, op, diffstategrad, **hparams)
        if not hasattr(prior, "posterior_mean"):
            raise ValueError("posterior-mean needs an analytic Gaussian model (gaussian, gaussian-grey, gaussian-fmnist)")

    def estimate(self, y):
        return self.prior.posterior_mean(self.op, y)
