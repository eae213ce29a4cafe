"""Fit the analytic Gaussian prior to real photographs bundled with scikit-image.

Writes ``src/restore_cli/data/gaussian_prior.json``: the mean colour and
colour covariance in the model space ``[-1, 1]``, and a power-law spectrum
``s(f) ∝ (|f|^2 + f0^2)^(-beta/2)`` fitted (least squares on log power) to the
radially averaged power spectra of the photographs' luminance, on 256x256
crops.  With ``--fashion-mnist`` it fits the grey prior of the bundled Fashion-MNIST models
instead (training split only, 28x28 padded to 32x32 as ``training/train_priors.py`` does) and
writes it under the file's ``"fashion_mnist"`` key.  Run: ``python training/fit_gaussian_prior.py``.
"""

import json
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from skimage import data

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry"]
OUT = Path(__file__).resolve().parents[1] / "src/restore_cli/data/gaussian_prior.json"


def crops(img, size=256):
    h, w = img.shape[:2]
    for top in range(0, h - size + 1, size):
        for left in range(0, w - size + 1, size):
            yield img[top:top + size, left:left + size]


def power_law(spectra, bins):
    """Least-squares fit of ``log s(f) = log a - beta/2 log(f^2 + f0^2)`` to radially binned spectra."""
    fc = (bins[:-1] + bins[1:]) / 2
    logp = np.log(np.mean(spectra, 0))

    def resid(p):
        log_a, beta, log_f0 = p
        return log_a - beta / 2 * np.log(fc**2 + np.exp(log_f0) ** 2) - logp

    sol = least_squares(resid, x0=[0.0, 2.0, np.log(0.01)])
    return float(sol.x[1]), float(np.exp(sol.x[2])), float(np.sqrt(np.mean(sol.fun**2)))


def fashion_mnist():
    from restore_cli.bench.suite import load_fashion_mnist

    x = load_fashion_mnist("train")[0][:, 0].double().numpy() * 2 - 1  # [-1, 1], padded with the background
    f = np.sqrt(np.fft.fftfreq(32)[:, None] ** 2 + np.fft.fftfreq(32)[None, :] ** 2)
    bins = np.linspace(0, 0.5, 9)
    p = (np.abs(np.fft.fft2(x - x.mean())) ** 2 / 32**2).mean(0)  # stationary fit around the global mean
    spectra = [[p[(f >= lo) & (f < hi)].mean() for lo, hi in zip(bins[:-1], bins[1:])]]
    beta, f0, rms = power_law(spectra, bins)
    return {"source": "Fashion-MNIST training split (60000 images, 28x28 padded to 32x32), model space [-1, 1]",
            "grey_mean": float(x.mean()), "grey_var": float(x.var()), "beta": beta, "f0": f0, "fit_rms_log_power": rms}


def main():
    import sys

    if "--fashion-mnist" in sys.argv:
        fit = json.loads(OUT.read_text())
        fit["fashion_mnist"] = fashion_mnist()
        OUT.write_text(json.dumps(fit, indent=2) + "\n")
        print(json.dumps(fit["fashion_mnist"], indent=2))
        return
    pixels, spectra = [], []
    fy = np.fft.fftfreq(256)[:, None]
    fx = np.fft.fftfreq(256)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    bins = np.linspace(0, 0.5, 33)
    for name in PHOTOS:
        img = getattr(data, name)()
        if img.ndim == 2:
            continue
        x = img[..., :3].astype(np.float64) / 255.0 * 2 - 1
        for c in crops(x):
            pixels.append(c.reshape(-1, 3))
            lum = c.mean(-1)
            p = np.abs(np.fft.fft2(lum - lum.mean())) ** 2 / lum.size
            spectra.append([p[(f >= lo) & (f < hi)].mean() for lo, hi in zip(bins[:-1], bins[1:])])
    pix = np.concatenate(pixels)
    mean = pix.mean(0)
    cov = np.cov(pix.T)
    beta, f0, rms = power_law(spectra, bins)
    lum_w = np.ones(3) / 3
    fit = {
        "source": "scikit-image photographs " + ", ".join(PHOTOS) + " (256x256 crops), model space [-1, 1]",
        "mean": mean.tolist(),
        "color_cov": cov.tolist(),
        "grey_mean": float(mean @ lum_w),
        "grey_var": float(lum_w @ cov @ lum_w),
        "beta": beta,
        "f0": f0,
        "crops": len(spectra),
        "fit_rms_log_power": rms,
    }
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    if "fashion_mnist" in old:
        fit["fashion_mnist"] = old["fashion_mnist"]
    OUT.write_text(json.dumps(fit, indent=2) + "\n")
    print(json.dumps(fit, indent=2))


if __name__ == "__main__":
    main()
