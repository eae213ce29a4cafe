"""Exact-posterior experiments with the analytic Gaussian prior (the solvers' test oracle).

For a linear task and the Gaussian prior the posterior is Gaussian and known
in closed form (:meth:`GaussianPrior.posterior_dense`).  :func:`compare`
runs a solver ``n`` times on one measurement and reports how far the mean of
its samples lies from the exact posterior mean (relative to the prior mean's
distance, so 1 means "ignores y"), the ratio of its per-pixel spread to the
exact posterior standard deviation (0 means "collapses to a point"), and its
Bayes efficiency ``MSE(exact mean, truth) / MSE(solver mean, truth)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import Blur, Inpainting, gaussian_kernel
from ..priors import GaussianPrior, LinearLatentPrior
from ..rng import make_generators


@dataclass
class OracleReport:
    rel_mean_error: float  # ||mean - m|| / ||mu - m||
    spread_ratio: float  # RMS solver std / RMS exact posterior std
    efficiency: float  # MSE(m, truth) / MSE(mean, truth)
    nfe: int


def oracle_task(task: str, shape=(3, 12, 12), sigma_y: float = 0.05, seed: int = 5, latent: bool = False):
    """A small linear task with a truth drawn from the fitted Gaussian prior: ``(prior, op, truth, y)``.

    ``latent=True`` gives the latent oracle: the same image prior seen through an orthogonal
    "autoencoder" (:class:`LinearLatentPrior`), whose image posterior is the same.
    """
    c, h, w = shape
    prior = GaussianPrior.fitted(c)
    truth = prior.decode(prior.sample(shape, make_generators(seed, 1))).float()
    if task == "box":
        m = torch.ones(1, 1, h, w)
        m[..., h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 0
        op = Inpainting(m, c, sigma_y=sigma_y, kind="box")
    elif task == "gaussian":
        op = Blur(gaussian_kernel(7, 1.0), shape, sigma_y=sigma_y, kind="gaussian")
    else:
        raise ValueError(f"unknown oracle task {task!r}")
    y = op(truth, make_generators(seed + 1, 1))
    if latent:
        prior = LinearLatentPrior(prior, shape)
    return prior, op, truth, y


def compare(solver_cls, task: str, n: int = 32, seed: int = 10, samples: torch.Tensor | None = None,
            truth_seed: int = 5, latent: bool = False, dsg=None, sigma_y: float = 0.05, shape=(3, 12, 12),
            **hparams) -> OracleReport:
    """Run ``solver_cls`` ``n`` times (or score given ``samples``, images in [0, 1] units) against the exact posterior."""
    prior, op, truth, y = oracle_task(task, shape=shape, seed=truth_seed, latent=latent, sigma_y=sigma_y)
    image_prior = prior.image_prior if latent else prior
    mean_ex, std_ex = image_prior.posterior_dense(op, y.double())
    nfe = 0
    if samples is None:
        op_n = op if not isinstance(op, Inpainting) else Inpainting(op.mask.expand(n, -1, -1, -1), op.in_shape[0],
                                                                     op.sigma_y, op.kind)
        res = solver_cls(prior, op_n, dsg, **hparams).run(y.expand(n, -1, -1, -1).contiguous(), make_generators(seed, n))
        samples = prior.decode(res.model.double())  # unclamped, image units
        nfe = res.nfe
    mean_s, std_s = samples.mean(0, keepdim=True), samples.std(0, keepdim=True)
    prior_mean = image_prior.decode(image_prior.mu.reshape(1, -1, 1, 1).expand_as(mean_ex))
    rel = float((mean_s - mean_ex).norm() / (prior_mean - mean_ex).norm())
    spread = float(std_s.pow(2).mean().sqrt() / std_ex.pow(2).mean().sqrt())
    eff = float((mean_ex - truth).pow(2).mean() / (mean_s - truth).pow(2).mean())
    return OracleReport(rel, spread, eff, nfe)
