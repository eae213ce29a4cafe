"""DAPS: Decoupled Annealing Posterior Sampling (Zhang et al., 2024), pixel and latent.

**Pixel DAPS** follows the paper's release of the official code (commit 25471a8, "V24",
``schedule = "v24"``):

for each annealing level ``sigma_i`` (200 levels, EDM ``rho = 7`` grid from
``sigma_max = 100`` to ``sigma_min = 0.1``, then 0):

1. ``x0_hat``: solve the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) /
   sigma`` from ``sigma_i`` to 0 with ``ode_steps`` Euler steps on a ``rho = 7``
   grid down to 0.01 then 0 (5 network evaluations; the last step is the
   Tweedie denoise at 0.01);
2. Langevin dynamics on ``x0`` (``langevin_steps`` = 100) for
   ``p(x0 | x_t, y) ∝ N(y; A(x0), tau^2) N(x0; x0_hat, sigma_i^2)``
   (paper Eq. 9-10, ``r_t = sigma_t``)::

       x0 <- x0 - lr_i * grad[ ||A(x0) - y||^2 / (2 tau^2) + ||x0 - x0_hat||^2 / (2 sigma_i^2) ]
                + sqrt(2 lr_i) * eps,
       lr_i = lr * (1 + (i / N) * (lr_min_ratio - 1))          (linear decay to 1%)

3. re-noise: ``x_{i+1} = x0 + sigma_{i+1} * eps``.

Residuals are in the code's ``[-1, 1]`` units (``Operator.residual_scale``),
so ``tau = 0.01`` and the per-task learning rates of the code
(``configs/task/*.yaml``) keep their meaning.  The later refactor of the code
weighs the data term twice (``||A(x0) - y||^2 / tau^2``, ``data_weight = 1``); we keep the
paper's Gaussian likelihood (``data_weight = 0.5``).  Where a Langevin step produces a
non-finite value the code returns zeros; we restart that image's chain from ``x0_hat`` instead.

**Latent DAPS** (``--method daps`` on a latent model, or ``latent-daps``) is the same annealing on
the latent ``z`` with the decoder in the likelihood.  The only release of the code with a latent
version is the 2025 restructure (commit a9bed9f onward; defaults here from the newest, 098df6b:
``sampler.py`` ``LatentDAPS``, ``cores/mcmc.py`` ``MCMCSampler``, ``cores/scheduler.py``,
``forward_operator.LatentWrapper``, ``configs/sampler/latent_edm_daps.yaml`` (LDM) and
``sd_edm_daps.yaml`` (Stable Diffusion, the same numbers), and the ``ldm:`` / ``sd:`` groups of
``configs/task/*.yaml``; ``commands/ldm_ffhq.sh``, "DAPS 100").  Per annealing level:

1. ``z0_hat``: ``ode_steps`` = 2 Euler steps of the PF-ODE on the (``ode_steps`` + 1)-point
   ``rho = 7`` grid from ``sigma_i`` down to ``ode_sigma_min`` = 0.001, where it stops (no final
   denoise; ``schedule = "v25"``): 2 network evaluations per level, 100 in all;
2. damped Hamiltonian Monte Carlo (``mc_algo = "hmc"``; the code's ``mc_update``) on ``z0`` for
   ``p(z0 | z_t, y) ∝ exp(-data_weight ||A(D(z0)) - y||^2 / tau^2) N(z0; z0_hat, sigma_i^2)``
   with score ``s(z) = -data_weight clip(grad_z ||A(D(z)) - y||^2, -c, c) / tau^2 - (z - z0_hat) / sigma_i^2``
   (``c = grad_clip`` = 1: ``LatentWrapper.gradient`` clamps the latent data gradient elementwise;
   ``data_weight`` = 1: ``Operator.loss`` is the unhalved squared error)::

       v ~ N(0, I) at the start of every level,
       v <- momentum * v + sqrt(lr_i) * s(z) + sqrt(2 (1 - momentum)) * eps,
       z <- z + sqrt(lr_i) * v;

3. re-noise ``z_{i+1} = z0 + sigma_{i+1} * eps``; the result is ``D(z_N)``.

The annealing grid of the 2025 code (``schedule = "v25"``): its EDM scheduler makes ``N + 1``
points from ``sigma_max`` = 10 to ``sigma_min`` = 0.1 and keeps the first ``N`` (``N`` = 50), then
0, so ``sigma_min`` itself is never visited; the step-size decay uses ``i / (N + 1)``.  Step sizes
per task (``lr``, ``lr_min_ratio``, ``momentum``, ``langevin_steps`` = the HMC steps) are the
``ldm:`` group (LDM-VQ-4; also any other latent model, e.g. the bundled ones, and the oracle) or
the ``sd:`` group (models with a CLIP text encoder: Stable Diffusion).

The model around the network, as the 2025 code builds it (``model/__init__.py``; defaults set per model
by :func:`latent_task_defaults`):

* LDM-VQ-4 (any VQ latent model: the code's ``LDM`` class): the network runs under EDM's ``VPPrecond``
  (``model/precond.py``, its defaults ``beta_d = 19.9``, ``beta_min = 0.1``, ``M = 1000``), which feeds it the
  timestep of the continuous DDPM-linear schedule, ``t = (M - 1) (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2))
  - beta_min) / beta_d`` (:func:`vp_precond_timestep`), not that of the model's own (LDM's sqrt-linear
  0.0015-0.0195) schedule: at sigma = 0.1 the network is told t = 27 where its schedule has t = 5.6, at
  sigma = 10 t = 675 for 737.  That is ``timestep_map = "vp"``, the default on VQ models because it is what
  produced the code's LDM numbers (the paper's tables) and its ``ldm:`` step sizes were tuned with it;
  ``--set timestep_map=model`` gives the model's own schedule (the timestep consistent with the noise
  level, the default on every other model).  Both keep the code's input scaling ``1 / sqrt(1 + sigma^2)``.
* Stable Diffusion (a model with a CLIP text encoder: the code's ``StableDiffusionModel`` with
  ``configs/model/stable-diffusion-v1.5.yaml``): classifier-free guidance ``cfg_scale`` = 7.5
  (``eps = eps_null + 7.5 (eps_prompt - eps_null)``, the null prompt ""), with the prompt "a natural
  looking image" (:data:`restore_cli.models.catalog.DAPS_SD_PROMPT`; the run's default prompt for ``daps``/``latent-daps`` on such a model,
  ``--prompt`` changes it); and the latent decoded at ``decode_size`` = 512 (the code's ``inner_resolution``)
  and resized by bilinear interpolation (``F.interpolate(..., mode="bilinear")``, no antialiasing: exactly the
  2x2 mean for 512 -> 256) to the image's own size (the code's ``target_resolution`` = 256, the size of its
  FFHQ/ImageNet test images).  The solver's forward model is therefore ``A(R(D(z)))`` with ``R`` that resize:
  the measurement ``y``, the restored image and its metrics all stay at the image's size, and only the
  latent is at the decode size (64x64 for a 256x256 image).  An image whose shorter side is at least
  ``decode_size`` is decoded at its own size (no resize); otherwise both sides are scaled by
  ``decode_size / shorter side``.  The code's ``sd:`` step sizes were tuned in this setup.
  ``--set cfg_scale=1 --set decode_size=0`` is the unguided model decoded at the image's size.  The code
  maps sigma to SD's timestep with the continuous form of its scaled-linear schedule (``cores/scheduler.py``
  ``VPScheduler``): within 1.5 timesteps of 1000 of the model's own discrete schedule used here.

The paper's text writes the latent update as the pixel one: Langevin dynamics with
``||A(D(z0)) - y||^2 / (2 beta_y^2) + ||z0 - z0_hat||^2 / (2 r_t^2)`` and no clipping: that is
``--set mc_algo=langevin --set data_weight=0.5 --set grad_clip=0`` (with ``lr`` retuned: the
code's latent step sizes are HMC's).  ``--set schedule=v24`` gives the pixel release's grids.

DiffStateGrad (DiffStateGrad paper, Appendix C.5): the SVD of ``x0_hat`` (the
ODE estimate, "our diffusion state"; ``z0_hat`` on a latent model, per latent channel, which
``rank_mode = "channels"`` handles for any number of channels) is computed once per annealing
level and the full gradient (likelihood + prior term; HMC's score) is projected every
``period``-th MCMC step (F = 1); the injected noise (and HMC's momentum) is not projected.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..rng import noise_like, randn
from .base import Solver, per_image_sq_norm
from .projection import projector

# the 2025 code's latent samplers (configs/sampler/latent_edm_daps.yaml = sd_edm_daps.yaml)
LATENT = {"annealing_steps": 50, "sigma_max": 10.0, "sigma_min": 0.1, "ode_steps": 2, "ode_sigma_min": 0.001,
          "tau": 0.01, "mc_algo": "hmc", "data_weight": 1.0, "grad_clip": 1.0, "schedule": "v25"}


def _hmc(steps, lr, lr_min_ratio, momentum):
    return {"langevin_steps": steps, "lr": lr, "lr_min_ratio": lr_min_ratio, "momentum": momentum}


# configs/task/<task>.yaml of the 2025 code (commit 098df6b): the `ldm:` group (LDM-VQ-4 FFHQ)
LDM_TASKS = {
    "inpaint_box": _hmc(15, 9.02e-6, 0.13, 0.74),           # inpainting.yaml
    "inpaint_random": _hmc(38, 8.40e-6, 0.013, 0.92),       # inpainting_rand.yaml
    "deblur_gaussian": _hmc(35, 2.70e-6, 0.95, 0.95),       # gaussian_blur.yaml
    "deblur_motion": _hmc(49, 2.4e-5, 0.041, 0.45),         # motion_blur.yaml
    "superres": _hmc(24, 1.35e-4, 0.023, 0.86),             # down_sampling.yaml
    "phase_retrieval": _hmc(65, 2.1e-5, 0.12, 0.41),        # phase_retrieval.yaml
    "hdr": _hmc(38, 4.52e-6, 0.015, 0.58),                  # hdr.yaml
    "deblur_nonlinear": _hmc(80, 3.71e-6, 0.024, 0.91),     # nonlinear_blur.yaml
}
# ... and the `sd:` group (Stable Diffusion v1.5)
SD_TASKS = {
    "inpaint_box": _hmc(58, 1.11e-6, 0.43, 0.92),
    "inpaint_random": _hmc(15, 3e-5, 1.0, 0.60),
    "deblur_gaussian": _hmc(40, 1e-5, 1.0, 0.9),
    "deblur_motion": _hmc(30, 2e-5, 1.0, 0.85),
    "superres": _hmc(30, 1e-4, 1.0, 0.45),
    "phase_retrieval": _hmc(95, 1.10e-4, 0.027, 0.47),
    "hdr": _hmc(45, 1.0e-5, 1.0, 0.7),
    "deblur_nonlinear": _hmc(60, 1e-5, 1.0, 0.80),
}
# the code's models around the network (model/__init__.py): Stable Diffusion with
# configs/model/stable-diffusion-v1.5.yaml (guidance_scale 7.5, prompt, inner_resolution 512 -> target_resolution 256),
# LDM under VPPrecond (model/precond.py)
SD_MODEL = {"cfg_scale": 7.5, "decode_size": 512}
LDM_MODEL = {"timestep_map": "vp"}
VP_PRECOND = {"beta_d": 19.9, "beta_min": 0.1, "M": 1000}  # VPPrecond's defaults, which LDM(...) keeps


def vp_precond_timestep(sigma: float, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000) -> float:
    """EDM's ``VPPrecond`` network timestep for ``sigma``: ``(M - 1) sigma_inv(sigma)``,
    ``sigma_inv(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d``."""
    return (M - 1) * (math.sqrt(beta_min**2 + 2 * beta_d * math.log1p(sigma**2)) - beta_min) / beta_d


# tasks the code has no config for: free-form and file masks take box inpainting's, other kernels Gaussian's
_ALIASES = {"inpaint_freeform": "inpaint_box", "inpaint_file": "inpaint_box"}


def latent_task_defaults(prior, task_key: str) -> dict:
    """The 2025 code's latent settings for ``task_key`` on ``prior``: the ``sd:`` group and the code's SD model
    (``SD_MODEL``: guidance 7.5, decoded at 512) for a model with a CLIP text encoder (Stable Diffusion), else the
    ``ldm:`` group, with the code's ``VPPrecond`` timesteps (``LDM_MODEL``) on a VQ model (LDM-VQ-4)."""
    sd = hasattr(prior, "text_encoder")
    table = SD_TASKS if sd else LDM_TASKS
    key = _ALIASES.get(task_key, task_key)
    if key not in table:
        key = "deblur_gaussian" if key.startswith("deblur") else "inpaint_box"
    model = SD_MODEL if sd else LDM_MODEL if getattr(prior, "is_vq", False) else {}
    return {**LATENT, **table[key], **model}


class DAPS(Solver):
    name = "daps"
    paper = "Zhang et al. 2024, Improving Diffusion Inverse Problem Solving with Decoupled Noise Annealing"
    defaults = {
        "annealing_steps": 200, "sigma_max": 100.0, "sigma_min": 0.1, "ode_steps": 5, "ode_sigma_min": 0.01,
        "langevin_steps": 100, "lr": 1e-4, "lr_min_ratio": 0.01, "tau": 0.01,
        # the MCMC update, the likelihood's weight and gradient clipping, the grids' release (module docstring)
        "mc_algo": "langevin", "momentum": 0.9, "data_weight": 0.5, "grad_clip": 0.0, "schedule": "v24",
        # latent models: the network's timestep map, classifier-free guidance, the decode size (module docstring)
        "timestep_map": "model", "cfg_scale": 1.0, "decode_size": 0,
    }
    choices = {"mc_algo": ("langevin", "hmc"), "schedule": ("v24", "v25"), "timestep_map": ("model", "vp")}
    guidance_keys = ("lr",)  # the Langevin step size
    # the code's per-task learning rates (pixel configs)
    task_defaults = {
        "inpaint_box": {"lr": 5e-5}, "inpaint_freeform": {"lr": 5e-5}, "inpaint_file": {"lr": 5e-5}, "inpaint_random": {"lr": 1e-4},
        "deblur_gaussian": {"lr": 1e-4}, "deblur_motion": {"lr": 5e-5}, "superres": {"lr": 1e-4},
        "phase_retrieval": {"lr": 5e-5}, "hdr": {"lr": 2e-5},
        "deblur_nonlinear": {"lr": 5e-5},  # nonlinear_blur.yaml (100 Langevin steps, the default)
    }

    def __init__(self, prior, op, diffstategrad=None, **hparams):
        super().__init__(prior, op, diffstategrad, **hparams)
        h = self.hp
        if h["timestep_map"] == "vp" and not (prior.space == "latent" and hasattr(prior, "unet")):
            raise ValueError("daps: timestep_map=vp needs a latent diffusion network (LDM, Stable Diffusion)")
        if float(h["cfg_scale"]) != 1.0 and not getattr(prior, "conditional", False):
            raise ValueError("daps: cfg_scale needs a text- or class-conditioned model")
        if int(h["decode_size"]) > 0 and prior.space != "latent":
            raise ValueError("daps: decode_size applies to latent models only")
        self._inner = None  # the decode shape during a run, when it differs from the image's

    @classmethod
    def method_revision(cls, task, space="pixel"):
        """2 on latent models: the code's VPPrecond timesteps (VQ) and guidance and decode size (SD) by default."""
        return 2 if space == "latent" else cls.revision

    @classmethod
    def tuned_steps(cls, space, steps_key):
        if space == "latent" and steps_key == "annealing_steps":
            return LATENT["annealing_steps"]
        return super().tuned_steps(space, steps_key)

    def defaults_for(self, prior, task_key):
        """Pixel: the V24 code's per-task learning rate; latent: the 2025 code's latent sampler and task group."""
        if prior.space == "pixel":
            return self.task_defaults.get(task_key, {})
        return latent_task_defaults(prior, task_key)

    def sigmas(self):
        h = self.hp
        n = int(h["annealing_steps"])
        if h["schedule"] == "v24":
            return self.prior.schedule.edm_sigmas(n, h["sigma_max"], h["sigma_min"])
        s = self.prior.schedule.edm_sigmas(n + 1, h["sigma_max"], h["sigma_min"])  # the 2025 code: N + 1 points,
        return torch.cat([s[:n], s[-1:]])  # the first N kept, then 0

    def ode_grid(self, sigma):
        """The PF-ODE's noise levels from ``sigma``: V24 ends with the Tweedie step to 0, the 2025 code at ``ode_sigma_min``."""
        h = self.hp
        n, lo = int(h["ode_steps"]), h["ode_sigma_min"]
        if sigma <= lo:
            return torch.tensor([sigma, 0.0], dtype=torch.float64)
        if h["schedule"] == "v24":
            return self.prior.schedule.edm_sigmas(n, sigma, lo)
        return self.prior.schedule.edm_sigmas(n + 1, sigma, lo)[:-1]

    def tweedie(self, x, sigma: float):
        """The prior's ``E[x0 | x]`` at ``sigma``; with ``timestep_map = "vp"`` the network is evaluated at the
        code's ``VPPrecond`` timestep (:func:`vp_precond_timestep`)."""
        if self.hp["timestep_map"] == "vp":
            return self.prior.denoise(x, sigma, timestep=vp_precond_timestep(sigma, **VP_PRECOND))
        return self.prior.denoise(x, sigma)

    def decode_shape(self):
        """``(C, H', W')`` the latent decodes to when ``decode_size`` exceeds the image's shorter side, else None."""
        c, h, w = self.op.in_shape
        size = int(self.hp["decode_size"])
        if size <= 0 or min(h, w) >= size:
            return None
        scale = size / min(h, w)
        return (c, round(h * scale), round(w * scale))

    def image(self, z):
        """``R(D(z))``: the decoded image, resized to the image's size when decoded larger (the code's SD
        ``decode``: bilinear, no antialiasing)."""
        img = self.prior.decode(z)
        if self._inner is not None:
            img = F.interpolate(img, size=tuple(self.op.in_shape[-2:]), mode="bilinear", align_corners=False)
        return img

    def residual(self, x0, y):
        """``y - A(R(D(z0)))`` in the code's units."""
        return self.op.residual_scale * (y - self.op.A(self.image(x0)))

    def init_x(self, y, gens, sigma_max):
        shape = self.prior.model_shape(self._inner or self.op.in_shape)
        return sigma_max * randn(shape, gens, device=y.device, dtype=y.dtype)

    def run(self, y, gens, callback=None):
        """The shared loop with the prior's classifier-free guidance set to ``cfg_scale`` and the latent at the
        decode shape for the run (both restored after it); the result is ``R(D(z_N))``."""
        prior = self.prior
        self._inner = self.decode_shape()
        saved = getattr(prior, "guidance_scale", None), getattr(prior, "_image_hw", None)
        if getattr(prior, "conditional", False):
            prior.guidance_scale = float(self.hp["cfg_scale"])
        self.decode_result = self._inner is None  # else decoded and resized below
        try:
            res = super().run(y, gens, callback)
            if self._inner is not None:
                with torch.no_grad():
                    res.images = self.image(res.model).clamp(0, 1)
        finally:
            if saved[0] is not None:
                prior.guidance_scale = saved[0]
            if hasattr(prior, "_image_hw"):
                prior._image_hw = saved[1]
            self._inner = None
        return res

    def ode_x0(self, x, sigma):
        """Euler PF-ODE from ``sigma`` down the ``ode_grid`` (``ode_steps`` evaluations)."""
        grid = self.ode_grid(sigma)
        with torch.no_grad():
            for s, s_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
                d = self.tweedie(x, s)
                x = d + (s_next / s) * (x - d)  # x + (1 - s_next/s) (D - x)
        return x

    def lr_at(self, i):
        h = self.hp
        n = int(h["annealing_steps"]) + (1 if h["schedule"] == "v25" else 0)  # the 2025 code's ratio is i / (N + 1)
        return h["lr"] * (1 + (i / n) * (h["lr_min_ratio"] - 1))

    def potential_grad(self, x0, x0_hat, y, sigma):
        """``grad[ data_weight ||A(D(x0)) - y||^2 / tau^2 + ||x0 - x0_hat||^2 / (2 sigma^2) ]``, the data part's
        gradient clipped elementwise to ``[-grad_clip, grad_clip]`` (before weighting) when ``grad_clip > 0``."""
        h = self.hp
        x0 = x0.detach().requires_grad_(True)
        clip = h["grad_clip"]
        if clip > 0:
            g = self.grad(per_image_sq_norm(self.residual(x0, y)).sum(), x0).clamp(-clip, clip)
            return g * (h["data_weight"] / h["tau"] ** 2) + (x0.detach() - x0_hat) / sigma**2
        loss = (per_image_sq_norm(self.residual(x0, y)) / (h["tau"] ** 2 / h["data_weight"])
                + per_image_sq_norm(x0 - x0_hat) / (2 * sigma**2)).sum()
        return self.grad(loss, x0)

    def mcmc(self, x0_hat, y, sigma, lr, gens, proj):
        """Langevin dynamics or damped HMC on ``x0`` from ``x0_hat`` (module docstring)."""
        h = self.hp
        hmc = h["mc_algo"] == "hmc"
        m = h["momentum"]
        x0 = x0_hat.clone()
        v = noise_like(x0, gens) if hmc else None  # the code's mc_prepare: a fresh velocity per level
        for k in range(int(h["langevin_steps"])):
            g = self.potential_grad(x0, x0_hat, y, sigma)
            with torch.no_grad():
                if hmc:
                    v = m * v - math.sqrt(lr) * proj(g, k) + math.sqrt(2 * (1 - m)) * noise_like(x0, gens)
                    x0 = x0 + math.sqrt(lr) * v
                else:
                    x0 = x0 - lr * proj(g, k) + math.sqrt(2 * lr) * noise_like(x0, gens)
                bad = ~torch.isfinite(x0.flatten(1)).all(1)  # restart those chains, without asking the device
                bad = bad.reshape(-1, *([1] * (x0.dim() - 1)))
                x0 = torch.where(bad, x0_hat, x0)
                if hmc:
                    v = torch.where(bad, torch.zeros_like(v), v)
        return x0

    def step(self, i, x, y, sigma, sigma_next, gens):
        x0_hat = self.ode_x0(x, sigma)
        x0 = self.mcmc(x0_hat, y, sigma, self.lr_at(i), gens, projector(self.dsg, x0_hat))
        x_next = x0 + sigma_next * noise_like(x0, gens) if sigma_next > 0 else x0
        return x_next, x0


class LatentDAPS(DAPS):
    """Latent DAPS under its own name: the defaults shown are the 2025 code's latent ones."""

    name = "latent-daps"
    defaults = {**DAPS.defaults, **LATENT, **LDM_TASKS["inpaint_box"]}

    def __init__(self, prior, op, diffstategrad=None, **hparams):
        if prior.space != "latent":
            raise ValueError("latent-daps needs a latent model; on a pixel model use daps")
        super().__init__(prior, op, diffstategrad, **hparams)
