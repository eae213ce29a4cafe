"""Image quality metrics: PSNR, SSIM, LPIPS, measurement residual."""

from .basic import measurement_residual, psnr, ssim
from .lpips import LPIPS, lpips_status

__all__ = ["psnr", "ssim", "measurement_residual", "LPIPS", "lpips_status"]
