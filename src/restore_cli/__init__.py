"""restore: image restoration with diffusion-model priors.

Conventions used everywhere in this package:

* images are float tensors ``[B, C, H, W]`` in ``[0, 1]``; a prior maps to and
  from its own model space (``[-1, 1]`` pixels, or a latent) at its boundary;
* solvers use the variance-exploding noise convention ``x = x0 + sigma * eps``;
  a variance-preserving model is converted with ``alpha_bar = 1 / (1 + sigma^2)``,
  ``x_vp = sqrt(alpha_bar) * x_ve``;
* randomness only through explicit ``torch.Generator`` objects, one per image
  (see :mod:`restore_cli.rng`), so a result never depends on its batch.
"""

__version__ = "0.1.0"
