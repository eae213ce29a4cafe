"""A pixel diffusion prior from a diffusers ``UNet2DModel`` and its scheduler config.

The network is a variance-preserving model; the Tweedie denoiser at a
variance-exploding noise level ``sigma`` is

    t      = the (fractional) timestep with sigma_t = sigma   (linear in log sigma)
    x_vp   = x / sqrt(1 + sigma^2)
    eps    : x0 = x - sigma * eps_theta(x_vp, t)                       (epsilon)
    v      : x0 = sqrt(a) x_vp - sqrt(1 - a) v_theta(x_vp, t)           (v_prediction)
    sample : x0 = x0_theta(x_vp, t)                                     (sample)

with ``a = alpha_bar_t = 1 / (1 + sigma^2)``.  Models that also predict a
variance (``2C`` output channels: the ADM checkpoints of DPS, DAPS and
DiffStateGrad, ``ffhq-256`` and ``imagenet-256``) give the mean from the first
``C`` channels; the other ``C`` are guided-diffusion's learned-range
interpolation ``v`` in ``[-1, 1]`` (Nichol & Dhariwal 2021, Eq. 15):
``log var = (v + 1)/2 log beta_t + (1 - v)/2 log beta_tilde_t``, which
:meth:`DiffusionPrior.denoise_with_variance` returns for the ancestral step
(``solvers.base.learned_noise_std``).  ``clip`` clamps ``x0`` to ``[-1, 1]``
as the DPS code's ``clip_denoised=True`` does.
"""

from __future__ import annotations

import torch

from .base import Prior, Schedule, as_batch_sigma, vp_scale

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _device_log_sigmas(schedule: Schedule, device: torch.device) -> torch.Tensor:
    """``schedule.log_sigmas`` on ``device`` (float64), copied there once."""
    if device.type == "cpu":
        return schedule.log_sigmas
    cache = schedule.__dict__.setdefault("_log_sigmas_on", {})
    if device not in cache:
        cache[device] = schedule.log_sigmas.to(device)
    return cache[device]


def timesteps(schedule: Schedule, sigma: torch.Tensor) -> torch.Tensor:
    """``schedule.sigma_to_t`` of per-image noise levels (any shape, flattened to ``[B]``, float32), the same
    arithmetic on their own device so that nothing waits for it (MPS, without float64, on the host)."""
    s = sigma.reshape(-1).detach()
    if s.device.type == "mps":
        return schedule.sigma_to_t(s.cpu()).to(device=s.device, dtype=torch.float32)
    log_sigmas = _device_log_sigmas(schedule, s.device)
    ls = s.to(torch.float64).clamp(schedule.sigma_min, schedule.sigma_max).log()
    idx = torch.searchsorted(log_sigmas, ls).clamp(1, len(log_sigmas) - 1)
    lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
    w = ((ls - lo) / (hi - lo)).clamp(0, 1)
    return ((idx - 1).to(torch.float64) + w).to(torch.float32)


def sigma_and_t(schedule: Schedule, sigma, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma, t)``: the noise level as ``[B, 1, 1, 1]`` of ``x``'s dtype (``as_batch_sigma``) and its timestep
    as ``[B]`` float32, both on ``x``'s device.  A scalar level (a Python number, what every solver passes)
    is looked up on the host and written with two fills: no copy to the device, no wait for it."""
    if isinstance(sigma, (int, float)) or (torch.is_tensor(sigma) and sigma.dim() == 0 and sigma.device.type == "cpu"):
        sv = float(torch.as_tensor(sigma, dtype=x.dtype))  # the value as_batch_sigma stores
        t = float(schedule.sigma_to_t(torch.tensor(sv, dtype=torch.float64)))
        b = x.shape[0]
        return (torch.full((b,) + (1,) * (x.dim() - 1), sv, dtype=x.dtype, device=x.device),
                torch.full((b,), t, dtype=torch.float32, device=x.device))
    s = as_batch_sigma(sigma, x)
    return s, timesteps(schedule, s)


def unet_x0(unet, x, sigma, schedule: Schedule, prediction_type: str, cond=None, t: torch.Tensor | None = None):
    """``(x0, v)``: the VE Tweedie estimate of a VP network (epsilon, v or sample prediction) and, for a
    learned-range model (``2C`` output channels), its variance interpolation ``v`` (else None).
    ``sigma``: ``[B, 1, 1, 1]``; ``t``: its timesteps (``[B]``, from :func:`sigma_and_t`; computed when None)."""
    p = next(unet.parameters())
    if t is None:
        t = timesteps(schedule, sigma)
    a = vp_scale(sigma)
    kw = {} if cond is None else {"encoder_hidden_states": cond.to(p.dtype)}
    out = unet((x * a).to(p.dtype), t, **kw).sample.to(x.dtype)
    c = x.shape[1]
    var = None
    if out.shape[1] == 2 * c:  # learned range: mean prediction, then the variance interpolation v
        out, var = out[:, :c], out[:, c:]
    if prediction_type == "epsilon":
        return x - sigma * out, var
    if prediction_type == "v_prediction":
        return a * (x * a) - (1 - a**2).sqrt() * out, var
    return out, var


class DiffusionPrior(Prior):
    name = "diffusion"

    def __init__(self, unet, scheduler_config: dict, clip: bool = True, name: str | None = None):
        cfg = dict(scheduler_config)
        super().__init__(Schedule.from_scheduler_config(cfg), channels=unet.config.in_channels)
        self.unet = unet.eval().requires_grad_(False)
        self.prediction_type = cfg.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.clip = clip
        self.sample_size = unet.config.sample_size
        self.learns_variance = unet.config.out_channels == 2 * unet.config.in_channels
        if name:
            self.name = name

    @classmethod
    def from_pretrained(cls, source: str, revision: str | None = None, subfolder: str | None = None,
                        scheduler_subfolder: str | None = None, clip: bool = True, name: str | None = None,
                        **hub_kwargs) -> "DiffusionPrior":
        """Load a UNet and its scheduler config from a Hub repo id or a local directory.

        ``hub_kwargs`` go to ``from_pretrained`` (``cache_dir``, ``local_files_only``,
        ``token``); safetensors weights are used when the repo has them.
        """
        from diffusers import DDPMScheduler, UNet2DModel

        unet = UNet2DModel.from_pretrained(source, revision=revision, subfolder=subfolder, **hub_kwargs)
        sched_cfg = DDPMScheduler.load_config(source, revision=revision, subfolder=scheduler_subfolder, **hub_kwargs)
        return cls(unet, sched_cfg, clip=clip, name=name or str(source))

    def low_memory(self, on: bool = True) -> None:
        """Gradient checkpointing in the UNet: backpropagating through it (DPS, PiGDM) then stores far
        fewer activations, at the cost of recomputing them (the same results)."""
        if getattr(self.unet, "_supports_gradient_checkpointing", False):
            self.unet.enable_gradient_checkpointing() if on else self.unet.disable_gradient_checkpointing()

    def denoise(self, x, sigma):
        self.nfe += 1
        return self._forward(x, *sigma_and_t(self.schedule, sigma, x))[0]

    def _denoise(self, x, sigma):
        return self._forward(x, sigma)[0]

    def denoise_with_variance(self, x, sigma):
        """``(x0, v)``: the Tweedie estimate and, for a learned-range model, its variance output ``v``."""
        self.nfe += 1
        return self._forward(x, *sigma_and_t(self.schedule, sigma, x))

    def _forward(self, x, sigma, t=None):
        x0, var = unet_x0(self.unet, x, sigma, self.schedule, self.prediction_type, t=t)
        return (x0.clamp(-1, 1) if self.clip else x0), var

    def info(self):
        return {**super().info(), "prediction_type": self.prediction_type, "clip": self.clip,
                "num_train_timesteps": self.schedule.num_train_timesteps, "learned_variance": self.learns_variance}
