"""Bayes efficiency of each pixel solver on the Gaussian-prior oracle.

    efficiency = MSE(exact posterior mean, truth) / MSE(mean of the solver's N samples, truth)

1 means the solver's sample mean is as good as the Bayes estimator (values a
little above 1 are Monte-Carlo luck on one truth); it is averaged here over
several truths drawn from the prior.  Also printed: the relative distance of
the sample mean to the exact posterior mean and the spread ratio (see
``restore_cli.bench.oracle``).  Run: ``.venv/bin/python benchmarks/tools/bayes_efficiency.py [--truths 3] [--n 32]``.
"""

import argparse
import time

from restore_cli.bench.oracle import compare
from restore_cli.solvers import SOLVERS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--truths", type=int, default=3)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--tasks", default="box,gaussian")
    a = ap.parse_args()
    print(f"{'task':<10}{'solver':<8}{'efficiency':>11}{'rel mean err':>14}{'spread':>8}{'NFE':>6}{'s/run':>8}")
    for task in a.tasks.split(","):
        for name, cls in SOLVERS.items():
            t = time.time()
            reps = [compare(cls, task, n=a.n, truth_seed=5 + 11 * k) for k in range(a.truths)]
            mean = lambda f: sum(f(r) for r in reps) / len(reps)  # noqa: E731
            print(f"{task:<10}{name:<8}{mean(lambda r: r.efficiency):>11.3f}{mean(lambda r: r.rel_mean_error):>14.3f}"
                  f"{mean(lambda r: r.spread_ratio):>8.2f}{reps[0].nfe:>6}{(time.time() - t) / len(reps):>8.1f}", flush=True)


if __name__ == "__main__":
    main()
