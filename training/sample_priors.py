"""Sample grids and quality numbers of the bundled Fashion-MNIST models (docs/img/, docs/models.md).

    python training/sample_priors.py [--n 64] [--steps 100]

For each bundled model: ``n`` unconditional samples (DDPM ancestral sampling over ``steps``
DDIM-spaced levels, with ``restore``'s own prior and step), the latent model also per class
with classifier-free guidance 3, written as PNG grids; then

* nearest-neighbour distance: the mean RMS distance of each sample to its nearest image of the
  training split, beside the same number for ``n`` held-out test images (a classifier-free
  check: a sample far from every training image is not a garment; far *closer* than test
  images would mean memorisation);
* the autoencoder's reconstruction PSNR on 1000 test images (latent model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from restore_cli.bench.suite import load_fashion_mnist
from restore_cli.models.config import load_registry
from restore_cli.models.hub import load_prior
from restore_cli.images.write import write_png
from restore_cli.rng import make_generators, randn
from restore_cli.solvers.base import ancestral_step

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def sample(prior, n, steps, seed=0, cond=None):
    gens = make_generators(seed, n)
    shape = prior.model_shape((prior.channels, 32, 32))
    sig = prior.schedule.ddim_sigmas(steps).tolist()
    x = sig[0] * randn(shape, gens)
    kw = {} if cond is None else {"cond": cond}
    for s, s_next in zip(sig[:-1], sig[1:]):
        x0 = prior.denoise(x, s, **kw)
        noise = randn(shape, gens) if s_next > 0 else None
        x = ancestral_step(x, x0, s, s_next, noise)
    return prior.decode(x).clamp(0, 1)


def grid(imgs, ncol=8, pad=2):
    n, c, h, w = imgs.shape
    rows = (n + ncol - 1) // ncol
    out = torch.ones(c, rows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, im in enumerate(imgs):
        r, k = divmod(i, ncol)
        out[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = im
    return out


def nn_distance(samples, train, chunk=256):
    """Mean over samples of the RMS distance to the nearest training image."""
    t = train.flatten(1)
    best = []
    for i in range(0, len(samples), chunk):
        d = torch.cdist(samples[i:i + chunk].flatten(1), t)
        best.append(d.min(1).values / t.shape[1] ** 0.5)
    return float(torch.cat(best).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--models", nargs="*", default=["fmnist-ddpm-32", "fmnist-ldm-32"])
    args = ap.parse_args()
    reg = load_registry()
    train, _ = load_fashion_mnist("train")
    test, labels = load_fashion_mnist("test")
    ref = nn_distance(test[: args.n], train)
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    report = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else {}
    report.update({"test_images_nn_rms": ref, "n": args.n, "steps": args.steps})
    for name in args.models:
        prior = load_prior(reg.get(name), torch.device("cpu"), torch.float32, allow_download=False)
        s = sample(prior, args.n, args.steps)
        write_png(out / f"{name}-samples.png", grid(s))
        entry = {"samples_nn_rms": nn_distance(s, train)}
        if getattr(prior, "conditional", False):
            prior.guidance_scale = 3.0
            per = []
            for k, cls in enumerate(prior.class_prompts.classes):
                prior.set_prompt(cls)
                per.append(sample(prior, 8, args.steps, seed=100 + k))
            write_png(out / f"{name}-classes.png", grid(torch.cat(per)))
            entry["class_samples_nn_rms"] = nn_distance(torch.cat(per), train)
            prior.guidance_scale = 1.0
            prior.set_prompt("")
        if hasattr(prior, "ae"):
            with torch.no_grad():
                rec = torch.cat([prior.decode(prior.encode(test[i:i + 250])) for i in range(0, 1000, 250)]).clamp(0, 1)
            entry["autoencoder_test_psnr"] = float((10 * torch.log10(1 / (rec - test[:1000]).pow(2).flatten(1).mean(1))).mean())
        report[name] = entry
        print(name, json.dumps(entry), flush=True)
    (out / "quality.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
