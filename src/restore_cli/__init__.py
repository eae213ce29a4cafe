"""restore: image restoration with diffusion-model priors.

From Python, ``restore_cli.restore(images, task=..., method=..., model=...)`` does what the command does
(:mod:`restore_cli.api`).  The packages, from the top: ``cli`` (the command), ``bench`` (suites),
``runs`` (one run), ``models`` (names, Hub, cache), ``solvers``, ``priors``, ``ops`` and ``metrics``,
then ``convert`` and ``images`` (checkpoint and image files) and small utilities; each imports only from
the ones below it (``[tool.importlinter]`` in pyproject.toml).

Conventions used everywhere in this package:

* images are float tensors ``[B, C, H, W]`` in ``[0, 1]``; a prior maps to and
  from its own model space (``[-1, 1]`` pixels, or a latent) at its boundary;
* solvers use the variance-exploding noise convention ``x = x0 + sigma * eps``;
  a variance-preserving model is converted with ``alpha_bar = 1 / (1 + sigma^2)``,
  ``x_vp = sqrt(alpha_bar) * x_ve``;
* randomness only through explicit ``torch.Generator`` objects, one per image
  (see :mod:`restore_cli.rng`), so a result never depends on its batch.
"""

from .version import __version__

__all__ = ["restore", "Restored", "__version__"]


def __getattr__(name: str):
    """``restore_cli.restore`` (:mod:`restore_cli.api`), imported on first use: the command line starts
    without torch."""
    if name in ("restore", "Restored"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
