"""DiffPIR: denoising diffusion models for plug-and-play image restoration (Zhu, Zhang, Liang, Cao, Wen,
Timofte & Van Gool, CVPR Workshops (NTIRE) 2023).

Algorithm 1 (half-quadratic splitting with the diffusion model as the prior's denoiser), per timestep:

    x0      = D(x_t, sigma_t)                                            (Eq. 11, the prior sub-problem)
    x0_hat  = argmin_x ||y - H x||^2 + rho_t ||x - x0||^2                 (Eq. 12, the data sub-problem)
    rho_t   = lambda sigma_n^2 / sigma_t^2,  sigma_t = sqrt(1 - abar_t) / sqrt(abar_t)
    eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)              (re-derived from x0_hat)
    x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1}) (sqrt(1 - zeta) eps_hat + sqrt(zeta) eps)

(P2L App. D.3, Eq. 55/56, writes the same step.)  In our variance-exploding convention ``eps_hat =
(x - x0_hat) / sigma`` and the step is ``x_next = x0_hat + sigma_next (sqrt(1 - zeta) eps_hat +
sqrt(zeta) eps)``.  The data step is ``LinearOperator.prox``: exact for inpainting (the mask formula),
circular blur (Fourier) and super-resolution (CG, to 1e-7), where the code uses FFT closed forms of
circular blur/SR and the mask formula.  For a blur with a reflect or zeros border (the CLI's default
border; DiffPIR's code blurs with ``mode='wrap'`` for its closed form) it is DCT-preconditioned CG capped
at 100 iterations, which is accurate for ``rho_t >= 1e-3`` (error <= 6e-6) but not in the earliest steps
of a nearly noiseless measurement (``rho_t`` down to ~1e-10; measured error 0.02-0.5 for ``rho_t`` =
1e-5-1e-9 on a 48x48 image): use ``--border circular`` to run the code's exact step.  The problem is affine-invariant
(both terms scale alike between ``[0, 1]`` and ``[-1, 1]`` images), so the units it is solved in do not
matter; ``rho_t`` does: as in the code (``main_ddpir*.py``), ``sigma_n`` is the measurement noise std in
``[0, 1]`` image units floored at 0.001 (``sigma = max(0.001, noise_level_img)``: a noiseless
measurement is fitted almost exactly, not divided by zero) and ``sigma_t`` is the model's ``[-1, 1]``
noise level, ``sqrt(1 - abar_t) / sqrt(abar_t)``.

Defaults, from the released code (``yuanzhi-zhu/DiffPIR``):

* the timesteps: ``skip_type = 'quad'`` (``t = T - 1 - floor(sqrt(linspace(0, T^2, steps)))``, the last
  one ``t = 0``: dense near the data), ``steps`` = 100 (``iter_num``; the inpainting script uses 20, the
  papers' tables 100); ``skip="uniform"`` gives the code's uniform grid (``steps + 1`` levels).
* per task (``lambda``, ``zeta``): deblur (7, 0.3) -- ``main_ddpir_deblur.py``, ``main_ddpir.py`` and
  P2L D.3 agree; inpaint (1, 1.0) -- ``main_ddpir_inpainting.py`` and ``configs/inpaint.yaml`` (P2L
  D.3 used lambda = 7); super-resolution (2, 0.25) -- the analytic branch of ``main_ddpir_sisr.py``
  (``sub_1_analytic = True``, ``sr_mode = 'blur'``: the closed-form data step, which our exact ``prox``
  is), which runs ``zeta = 0.25`` (``configs/sisr.yaml``) and sweeps ``lambda = 2 .. 12`` (``lambda_ * i``,
  ``i = 2 .. 12``, ``lambda_ = 1``) for SR x4; we take the sweep's value that measured best on the bundled
  model (table below).  The earlier default (35, 0.35) is the script's comment on its *first-order* branch
  (``sub_1_analytic = False``: ``x0 - grad ||y - H x0|| / rho_t``, "zeta=0.35; lambda_=35: ImageNet", and
  (15, 0.25) for FFHQ), whose ``lambda`` scales a gradient step, not the proximal weight, and which P2L
  D.3 quotes for SR x8; it is ``--set lambda=35 --set zeta=0.35``.

  Measured (``restore superres --scale 4 --method diffpir --model fmnist-ddpm-32 examples/fmnist``, 8 images,
  100 steps, seed 0; mean PSNR dB / SSIM / LPIPS)::

      lambda  zeta   default noise (0.05)      --noise-sigma 0.1 (the code's 12.75/255)
        2     0.25   19.75 / 0.697 / 0.115      18.46 / 0.628 / 0.129
        4     0.25   19.71 / 0.697 / 0.115
        6     0.25                              17.97 / 0.579 / 0.133
        7     0.25   19.66 / 0.696 / 0.116
       12     0.25   19.60 / 0.693 / 0.116      17.48 / 0.535 / 0.134
        2     0.35   19.80 / 0.701 / 0.114
       12     0.35   19.65 / 0.697 / 0.115
       35     0.35   19.45 / 0.683 / 0.118      16.53 / 0.462 / 0.175
       35     0.25   19.41 / 0.681 / 0.117

  (the differences between zeta 0.25 and 0.35 are within 0.05 dB: we keep the code's 0.25).
* the last timestep: the code evaluates the model at ``t = 0`` but uses neither that estimate nor a data
  step, returning ``x_0`` itself (noise std ``sqrt(1 - abar_0)`` = 0.01 in ``[-1, 1]`` units); we do the
  same without the unused evaluation, so ``steps`` levels cost ``steps - 1`` evaluations.
  ``final_prox=true`` is Algorithm 1 as printed (``abar = 1`` after the last step): the result is
  ``x0_hat`` of that last evaluation (``steps`` evaluations).

Not reproduced: the code's ``eta`` (a DDIM noise inside the ``sqrt(1 - zeta)`` part; 0 in every
script), its start from the measurement noised to ``t = T - 1`` (weight ``sqrt(abar) = 0.006``; we start
from noise) and its first-order (non-analytic) data step.

DiffStateGrad is refused (``gradient_guided = False``): the data step is an exact proximal map, with
no measurement gradient to project, and projecting the step ``x0_hat - x0`` onto the state's subspace
would no longer solve Eq. 12 -- a different method, not DiffPIR with DiffStateGrad.
"""

from __future__ import annotations

import math

import torch

from ..rng import Generators, noise_like
from .base import Solver

SIGMA_N_FLOOR = 0.001  # the code's sigma = max(0.001, noise_level_img)
SKIPS = ("quad", "uniform")


def diffpir_timesteps(num_train_timesteps: int, steps: int, skip: str = "quad") -> list[int]:
    """The code's timestep sequence (descending, distinct), ``t = T - 1 - seq``."""
    T, n = int(num_train_timesteps), int(steps)
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if skip == "quad":
        seq = [int(s) for s in torch.linspace(0, T**2, n, dtype=torch.float64).sqrt().tolist()]
        seq[-1] -= 1  # the code's seq[-1] = seq[-1] - 1: the last timestep is t = 0
    elif skip == "uniform":
        c = T // n
        seq = [i * c for i in range(n)] + ([T - 1] if c > 1 else [])
    else:
        raise ValueError(f"skip must be one of {', '.join(SKIPS)}")
    ts = sorted({min(max(T - 1 - s, 0), T - 1) for s in seq}, reverse=True)
    return ts


class DiffPIR(Solver):
    name = "diffpir"
    paper = "Zhu et al. 2023, Denoising Diffusion Models for Plug-and-Play Image Restoration"
    gradient_guided = False
    linear_only = True
    defaults = {"steps": 100, "lambda": 7.0, "zeta": 0.3, "skip": "quad", "final_prox": False}
    choices = {"skip": SKIPS}
    guidance_keys = ("lambda",)
    task_defaults = {
        "inpaint": {"lambda": 1.0, "zeta": 1.0},
        "deblur": {"lambda": 7.0, "zeta": 0.3},
        "superres": {"lambda": 2.0, "zeta": 0.25},  # main_ddpir_sisr.py's analytic sweep (module docstring)
    }

    @classmethod
    def method_revision(cls, task, space="pixel"):
        """2 on super-resolution: the analytic branch's (lambda, zeta) = (2, 0.25) by default (was (35, 0.35))."""
        return 2 if task == "superres" else cls.revision

    def __init__(self, prior, op, diffstategrad=None, **hparams):
        super().__init__(prior, op, diffstategrad, **hparams)
        if prior.space != "pixel":
            raise ValueError("diffpir works on pixel priors")
        if not 0 <= float(self.hp["zeta"]) <= 1:
            raise ValueError(f"diffpir: zeta must be in [0, 1], got {self.hp['zeta']}")
        if not float(self.hp["lambda"]) > 0:
            raise ValueError(f"diffpir: lambda must be > 0, got {self.hp['lambda']}")
        if int(self.hp["steps"]) < 2 and not self.hp["final_prox"]:
            raise ValueError("diffpir needs steps >= 2 (its last level is returned as it is), or --set final_prox=true")
        self.sigma_n = max(SIGMA_N_FLOOR, op.sigma_y)

    def defaults_for(self, prior, task_key):
        return self.task_defaults.get(self.op.name, {})

    def sigmas(self):
        ts = diffpir_timesteps(self.prior.schedule.num_train_timesteps, int(self.hp["steps"]), self.hp["skip"])
        return torch.cat([self.prior.schedule.sigmas[ts], torch.zeros(1, dtype=torch.float64)])

    def rho(self, sigma: float) -> float:
        """``rho_t = lambda sigma_n^2 / sigma_t^2`` (the code's ``rhos``)."""
        return float(self.hp["lambda"]) * self.sigma_n**2 / sigma**2

    def data_step(self, x0: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
        """Eq. 12: ``argmin_x ||y - H x||^2 + rho_t ||x - x0||^2`` (model space in and out)."""
        img = self.op.prox(self.prior.decode(x0), self.rho(sigma), y)
        return self.prior.encode(img)

    @torch.no_grad()
    def step(self, i: int, x: torch.Tensor, y: torch.Tensor, sigma: float, sigma_next: float,
             gens: Generators) -> tuple[torch.Tensor, torch.Tensor]:
        if sigma_next <= 0 and not self.hp["final_prox"]:
            return x, x  # the code returns x_0 (its last model evaluation is unused)
        x0 = self.prior.denoise(x, sigma)
        x0_hat = self.data_step(x0, y, sigma)
        if sigma_next <= 0:
            return x0_hat, x0_hat
        zeta = float(self.hp["zeta"])
        eps_hat = (x - x0_hat) / sigma
        noise = noise_like(x, gens)
        x_next = x0_hat + sigma_next * (math.sqrt(1 - zeta) * eps_hat + math.sqrt(zeta) * noise)
        return x_next, x0_hat
