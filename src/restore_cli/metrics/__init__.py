"""Image quality metrics: PSNR, SSIM, LPIPS, measurement residual.

``LPIPS`` and ``lpips_status`` are imported from :mod:`.lpips` on first use, not with the package, so that
``python -m restore_cli.metrics.lpips install`` runs that module once (no runpy warning about a module
already imported).
"""

from .basic import measurement_residual, psnr, ssim

__all__ = ["psnr", "ssim", "measurement_residual", "LPIPS", "lpips_status"]


def __getattr__(name: str):
    if name in ("LPIPS", "lpips_status"):
        from . import lpips

        return getattr(lpips, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
