"""PSNR, SSIM and the measurement residual, per image, on ``[0, 1]`` images.

* PSNR: ``10 log10(1 / MSE)`` over all pixels and channels (data range 1).
* SSIM: scikit-image's ``structural_similarity`` with Wang et al.'s (2004)
  settings: 11x11 Gaussian window with sigma 1.5 (``gaussian_weights=True``),
  ``K1 = 0.01, K2 = 0.03``, population covariances
  (``use_sample_covariance=False``), data range 1, averaged over the channels.
* measurement residual: ``||A(x_hat) - y|| / ||y||``.
"""

from __future__ import annotations

import numpy as np
import torch


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    mse = (x.double() - ref.double()).flatten(1).pow(2).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-20))


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    from skimage.metrics import structural_similarity

    out = []
    for a, b in zip(x.detach().cpu().double().numpy(), ref.detach().cpu().double().numpy()):
        side = min(a.shape[1:])
        # images smaller than the 11x11 window fall back to a uniform window that fits
        win = dict(gaussian_weights=True, sigma=1.5) if side >= 11 else dict(win_size=max(_odd(side), 3))
        out.append(structural_similarity(np.moveaxis(a, 0, -1), np.moveaxis(b, 0, -1), data_range=1.0,
                                         channel_axis=-1, use_sample_covariance=False, **win))
    return torch.tensor(out, dtype=torch.float64)


def _odd(n: int) -> int:
    return n if n % 2 else n - 1


def measurement_residual(op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        r = (op.A(x) - y).flatten(1).norm(dim=1)
        return (r / y.flatten(1).norm(dim=1).clamp_min(1e-12)).double()
