"""DiffStateGrad's rank rules on the Gaussian oracle: posterior-sampling efficiency, grey and colour.

For DPS and DAPS on the analytic Gaussian prior (box inpainting, exact posterior known), with no
projection and with each rank rule (``channels``: the released code's rule generalised, the default;
``paper``: per channel; ``reference``: the code's literal n / 3), this prints the Bayes efficiency
``MSE(exact posterior mean, truth) / MSE(mean of N samples, truth)`` averaged over a few problems, the
samples' spread relative to the exact posterior std, the rank each rule keeps on the prior's samples
and the share of the measurement gradient's energy that survives the projection onto a prior sample's
subspace (why a rule helps or costs).

    python benchmarks/tools/dsg_rank_rules.py [--size 32] [--truths 3] [--n 32] [--solvers dps,daps]
"""

from __future__ import annotations

import argparse
import time

import torch

from restore_cli.bench.oracle import compare, oracle_task
from restore_cli.rng import make_generators
from restore_cli.solvers import DAPS, DPS, DiffStateGrad

RULES = ("none", "channels", "paper", "reference")


def subspace_stats(shape, rule: str, tau: float = 0.99, seed: int = 5):
    """Mean rank per channel that ``rule`` keeps on prior samples, and the share of ||A^T (y - A x)||^2 kept
    when that gradient (at the prior mean) is projected onto the subspace of a prior sample."""
    prior, op, truth, y = oracle_task("box", shape=shape, seed=seed, sigma_y=0.01)
    x = prior.decode(prior.sample(shape, make_generators(seed + 7, 1))).float()
    g = op.A_adjoint(y - op.A(prior.decode(prior.mu.reshape(1, -1, 1, 1).expand(1, *shape).float())))
    p = DiffStateGrad(tau, rank_mode=rule).at(x * 2 - 1)
    kept = float(p(g).pow(2).sum() / g.pow(2).sum())
    return float(p.rank.double().mean()), kept


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--truths", type=int, default=3)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--solvers", default="dps,daps")
    ap.add_argument("--channels", default="1,3")
    a = ap.parse_args()
    solvers = {"dps": DPS, "daps": DAPS}
    print("| channels | solver | rule | efficiency | spread | rank/channel | gradient energy kept | s/problem |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for c in map(int, a.channels.split(",")):
        shape = (c, a.size, a.size)
        for name in a.solvers.split(","):
            for rule in RULES:
                t = time.time()
                dsg = None if rule == "none" else DiffStateGrad(0.99, rank_mode=rule)
                reps = [compare(solvers[name], "box", n=a.n, truth_seed=5 + 11 * k, dsg=dsg, shape=shape, sigma_y=0.01)
                        for k in range(a.truths)]
                eff = sum(r.efficiency for r in reps) / len(reps)
                spread = sum(r.spread_ratio for r in reps) / len(reps)
                rank, kept = subspace_stats(shape, rule) if dsg else (float(a.size), 1.0)
                print(f"| {'grey' if c == 1 else 'colour'} | {name} | {rule} | {eff:.2f} | {spread:.2f} | {rank:.1f} | "
                      f"{kept:.2f} | {(time.time() - t) / len(reps):.0f} |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
