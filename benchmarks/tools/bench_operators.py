"""Time per application of the blur operator: ``A``, ``A^T`` and one ``solve_AAt`` (PiGDM's Eq. 7).

For each image size (RGB, batch 1, float32) and kernel size it times three implementations of the
same operator, interleaved (one call of each in turn, ``--repeats`` rounds) and reports medians:

* ``before``: the implementation before FFT sizes were rounded up and the adjoint made explicit
  (FFT on the unrounded extended grid with the kernel's FFT recomputed per call, ``A^T`` by
  autograd, ``solve_AAt`` by unpreconditioned CG with a float64 tolerance: always 100 iterations
  in float32), kept here as a reference;
* ``direct``: ``Blur(method="direct")``: ``conv2d``; ``solve_AAt`` as below;
* ``fft``: ``Blur(method="fft")``: FFTs of a zero-padded grid; ``solve_AAt`` by CG preconditioned
  with the circular-border closed form.

``auto`` (the default) uses ``fft`` from ``restore_cli.ops.blur.FFT_MIN_TAPS`` kernel taps on.
The markdown table goes to stdout.  ``--quick``: fewer rounds, sizes 256 only.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/tools/bench_operators.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from restore_cli.ops import cg
from restore_cli.ops.base import LinearOperator
from restore_cli.ops.blur import FFT_MIN_TAPS, Blur, gaussian_kernel

SIGMA_Y = 0.025  # [0, 1] units (noise sigma 0.05 in the papers' [-1, 1] units)
R2_T = 0.5  # PiGDM's r_t^2 half-way through sampling
S2 = (2 * SIGMA_Y) ** 2 / R2_T  # the s2 PiGDM passes to solve_AAt (model units: residual_scale 2)


class BeforeBlur(Blur):
    """The blur as it was: FFT of the extended image's own size, ``A^T`` by autograd, plain CG."""

    def A(self, x):  # noqa: N802
        _, _, h, w = x.shape
        xp = self._extend(x)
        hp, wp = xp.shape[-2:]
        kf = torch.fft.rfft2(self.kernel.to(x.dtype), s=(hp, wp))
        out = torch.fft.irfft2(torch.fft.rfft2(xp) * kf, s=(hp, wp))
        return out[..., 2 * self.ph:2 * self.ph + h, 2 * self.pw:2 * self.pw + w]

    def A_adjoint(self, y):  # noqa: N802
        return LinearOperator.A_adjoint(self, y)

    def solve_AAt(self, v, r2, s2):  # noqa: N802
        return cg(lambda u: r2 * self.A(self.A_adjoint(u)) + s2 * u, v, iters=100, tol=1e-10)


def counting(op):
    """Count calls of ``op.A_adjoint``: one per CG iteration."""
    op.calls = 0
    inner = op.A_adjoint

    def at(y):
        op.calls += 1
        return inner(y)

    op.A_adjoint = at
    return op


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(size: int, k: int, repeats: int, solve_repeats: int):
    shape = (3, size, size)
    kernel = gaussian_kernel(k, max(1.0, k / 20))  # sigma 3 at 61 (DPS); the content does not change the time
    ops = {"before": BeforeBlur(kernel, shape, SIGMA_Y), "direct": Blur(kernel, shape, SIGMA_Y, method="direct"),
           "fft": Blur(kernel, shape, SIGMA_Y, method="fft")}
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, *shape, generator=g)
    v = torch.randn(1, *shape, generator=g)
    calls = {
        "A": lambda op: op.A(x),
        "A^T": lambda op: op.A_adjoint(x),
        "solve_AAt": lambda op: op.solve_AAt(v, 1.0, S2),
    }
    rows = []
    with torch.no_grad():
        for what, fn in calls.items():
            for op in ops.values():  # warm-up (caches, allocator)
                if what != "solve_AAt":
                    fn(op)
            times = {name: [] for name in ops}
            iters = {}
            n = solve_repeats if what == "solve_AAt" else repeats
            for _ in range(n):
                for name, op in ops.items():
                    if what == "solve_AAt":
                        counting(op)
                    times[name].append(timed(lambda: fn(op)))
                    if what == "solve_AAt":
                        iters[name] = op.calls
                        del op.A_adjoint
            med = {name: statistics.median(t) for name, t in times.items()}
            rows.append((size, k, what, med, iters))
    return rows


def fmt(t: float) -> str:
    return f"{t * 1e3:.0f} ms" if t >= 0.1 else f"{t * 1e3:.1f} ms"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds (1 for solve_AAt), 256x256 only")
    ap.add_argument("--repeats", type=int, default=7, help="rounds for A and A^T (default 7)")
    ap.add_argument("--solve-repeats", type=int, default=3, help="rounds for solve_AAt (default 3)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--kernels", type=int, nargs="+", default=[9, 31, 61])
    args = ap.parse_args(argv)
    sizes, repeats, solve_repeats = args.sizes, args.repeats, args.solve_repeats
    if args.quick:
        sizes, repeats, solve_repeats = [s for s in sizes if s <= 256] or sizes[:1], 2, 1
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); float32, batch 1, RGB; medians of {repeats} interleaved rounds "
          f"({solve_repeats} for solve_AAt, r2 = 1, s2 = {S2:g}); auto = fft from {FFT_MIN_TAPS} taps\n")
    print("| image | kernel | call | before | direct | fft | direct / fft | before / fft | CG iterations (before / direct / fft) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for k in args.kernels:
            for size_, k_, what, med, iters in bench(size, k, repeats, solve_repeats):
                it = " / ".join(str(iters[n]) for n in ("before", "direct", "fft")) if iters else ""
                print(f"| {size_}x{size_} | {k_}x{k_} | {what} | {fmt(med['before'])} | {fmt(med['direct'])} | "
                      f"{fmt(med['fft'])} | {med['direct'] / med['fft']:.1f} | {med['before'] / med['fft']:.1f} | {it} |",
                      flush=True)


if __name__ == "__main__":
    main()
