"""Cost of each latent method per image on a small latent model, with and without DiffStateGrad.

Prints a table: NFE (denoiser calls), decoder and encoder passes, backward passes, seconds and
peak memory per image (CUDA allocator peak on a GPU; the process's peak RSS on the CPU, model
included).  The model is a tiny random VQ (or KL) latent diffusion model built from a config
(``restore_cli.models.testing``), so the numbers measure the solvers' own work, not image quality.

    .venv/bin/python benchmarks/tools/bench_latent.py [--size 64] [--kind vq|kl] [--device cpu|cuda] [--full]

Without ``--full`` the step counts are scaled down (100 sampling steps; ReSample's inner loops
to 100 iterations) so the table takes a few minutes on 2 CPU cores; ``--full`` uses every
method's defaults.
"""

import argparse
import tempfile
from pathlib import Path

import torch

from restore_cli.models.config import local_model
from restore_cli.models.hub import load_prior
from restore_cli.ops import Inpainting, box_mask
from restore_cli.profiling import measure
from restore_cli.rng import make_generators
from restore_cli.solvers import DPS, GMLDPS, PSLD, DiffStateGrad, ReSample
from restore_cli.models.testing import save_tiny_latent_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--kind", default="vq", choices=["vq", "kl"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    quick = {} if a.full else {"steps": 100}
    methods = [("latent-dps", DPS, quick), ("gml-dps", GMLDPS, quick), ("psld", PSLD, quick),
               ("resample", ReSample, {} if a.full else {"steps": 100, "pixel_iters": 100, "latent_iters": 100})]
    with tempfile.TemporaryDirectory() as tmp:
        root = save_tiny_latent_model(Path(tmp) / "m", a.kind)
        prior = load_prior(local_model(root), dev, torch.float32)
        shape = (3, a.size, a.size)
        x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0)).to(dev)
        op = Inpainting(box_mask(a.size, a.size, make_generators(0, 1)), 3, kind="box").to(dev)
        y = op(x, make_generators(1, 1))
        print(f"box inpainting, {a.size}x{a.size}, tiny {a.kind.upper()} latent model, device {dev}, "
              f"{'defaults' if a.full else 'reduced steps'}")
        print(f"{'method':<12}{'DSG':<5}{'NFE':>6}{'decoder':>9}{'encoder':>9}{'backward':>10}{'seconds':>9}{'peak MB':>9}")
        for name, cls, hp in methods:
            for dsg in (None, DiffStateGrad(0.99, cls.dsg_default_period({}))):
                prior.n_decode = prior.n_encode = 0
                with measure(dev) as u:
                    r = cls(prior, op, dsg, **hp).run(y, make_generators(2, 1))
                peak = "-" if u.peak_mb is None else f"{u.peak_mb:.0f}"
                print(f"{name:<12}{'yes' if dsg else 'no':<5}{r.nfe:>6}{prior.n_decode:>9}{prior.n_encode:>9}"
                      f"{r.n_backward:>10}{u.seconds:>9.1f}{peak:>9}", flush=True)


if __name__ == "__main__":
    main()
