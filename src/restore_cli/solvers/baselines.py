"""Classical baselines that the diffusion methods are compared with (no learned prior).

* ``pseudo-inverse``: ``A^+ y`` for a linear task (for inpainting the zero-filled image,
  for super-resolution the minimum-norm upsampling), PiGDM's ``h^+`` for HDR and
  quantisation.  Phase retrieval has no pseudo-inverse.
* ``posterior-mean``: the exact posterior mean ``E[x | y]`` of a linear task under the
  analytic Gaussian prior (``GaussianPrior.posterior_mean``: the Wiener filter of the
  task, by preconditioned CG), for example the prior fitted to Fashion-MNIST
  (``gaussian-fmnist``).  Whether CG reached its tolerance is reported per image in
  ``Result.extra["cg"]`` (and warned about when it did not).
* ``posterior-sample``: an exact sample of that Gaussian posterior, by Matheron's rule (perturb, then
  correct with the posterior mean's solve): with ``x_p`` a prior sample and ``n`` a noise draw,
  ``x = x_p + Sigma H^T (H Sigma H^T + s^2 I)^{-1} (y - H x_p - n)`` has exactly the posterior's
  distribution.  It is the reference a posterior sampler (and ``--samples``'s mean and std map) is
  measured against.

The first two are deterministic; none takes steps or evaluates a network (NFE 0).
"""

from __future__ import annotations

import warnings

import torch

from ..rng import randn_like
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
    defaults = {"steps": 0, "max_iters": 500}  # the conjugate-gradient solve's iteration cap
    estimand = "mean"

    def __init__(self, prior, op, diffstategrad=None, **hparams):
        super().__init__(prior, op, diffstategrad, **hparams)
        if int(self.hp["max_iters"]) < 1:
            raise ValueError("max_iters must be >= 1")
        if not hasattr(prior, "posterior_mean"):
            raise ValueError("posterior-mean needs an analytic Gaussian model (gaussian, gaussian-grey, gaussian-fmnist)")

    def estimate(self, y):
        return self.prior.posterior_mean(self.op, y, iters=int(self.hp["max_iters"]))

    def solve(self, y, gens):
        """``(image, cg info)``: the posterior mean of ``y``."""
        return self.prior.posterior_mean(self.op, y, iters=int(self.hp["max_iters"]), return_info=True)

    def run(self, y, gens, callback=None):
        """The posterior mean, with ``extra["cg"]``: ``converged`` and ``rel_residual`` (lists, one per
        image), ``iterations``, ``system`` and ``tol`` of the conjugate-gradient solve."""
        with torch.no_grad():
            img, info = self.solve(y, gens)
            img = img.to(y.dtype)
        if not all(info["converged"]):
            bad = [i for i, ok in enumerate(info["converged"]) if not ok]
            worst = max(info["rel_residual"][i] for i in bad)
            warnings.warn(f"posterior-mean: conjugate gradients stopped after {info['iterations']} iterations "
                          f"above tolerance {info['tol']:g} for image(s) {bad} (relative residual up to {worst:.2g}); "
                          f"the result is not the exact posterior {self.estimand}", RuntimeWarning, stacklevel=2)
        return Result(img.clamp(0, 1), self.prior.encode(img), 0, 0, {"cg": info})


class PosteriorSample(PosteriorMean):
    name = "posterior-sample"
    paper = "an exact sample of the Gaussian posterior under the analytic prior (Matheron's rule)"
    estimand = "sample"

    def solve(self, y, gens):
        """``x_p + G (y - A x_p - n)`` (images; ``G`` the posterior mean's gain), written through the posterior
        mean as ``posterior_mean(y - A(x_p - m) - n) + (x_p - m)`` with ``m`` the prior mean's image: the
        prior sample and the noise come from each image's generator."""
        p, op = self.prior, self.op
        xp = p.decode(p.sample(op.in_shape, gens))  # float64 images
        m = p.decode(p.mu.reshape(1, -1, 1, 1).to(xp).expand_as(xp))
        dev = xp - m
        n = max(op.sigma_y, 1e-6) * randn_like(y.to(torch.float64), gens)  # the noise posterior_mean assumes
        img, info = p.posterior_mean(op, y.to(torch.float64) - op.A(dev) - n,
                                     iters=int(self.hp["max_iters"]), return_info=True)
        return img + dev, info
