"""Image quality metrics: PSNR, SSIM, LPIPS, FID/KID, measurement residual.

``LPIPS`` and ``lpips_status`` (from :mod:`.lpips`), ``FID`` and ``fid_status`` (from :mod:`.fid`) are imported
on first use, not with the package, so that ``python -m restore_cli.metrics.lpips install`` (or ``.fid``) runs
that module once (no runpy warning about a module already imported), and so that torchmetrics is only imported
when FID or KID is computed.
"""

from .basic import measurement_residual, psnr, ssim

__all__ = ["psnr", "ssim", "measurement_residual", "LPIPS", "lpips_status", "FID", "fid_status"]


def __getattr__(name: str):
    if name in ("LPIPS", "lpips_status"):
        from . import lpips

        return getattr(lpips, name)
    if name in ("FID", "fid_status"):
        from . import fid

        return getattr(fid, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
