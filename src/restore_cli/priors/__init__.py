"""Diffusion priors: denoisers in a model space, with the maps to and from images."""

from .base import Prior, Schedule, as_batch_sigma, vp_scale
from .diffusion import DiffusionPrior
from .gaussian import GaussianPrior
from .latent import LatentDiffusionPrior, LinearLatentPrior

__all__ = ["Prior", "Schedule", "as_batch_sigma", "vp_scale", "DiffusionPrior", "GaussianPrior", "LatentDiffusionPrior", "LinearLatentPrior"]
