"""The loop shared by every solver, and the pieces of diffusion sampling they reuse.

A solver walks a decreasing grid of noise levels ``sigma_0 > ... > sigma_N =
0`` in the prior's model space, in the variance-exploding convention
``x = x0 + sigma * eps``.  Only ``sigmas()`` and ``step()`` are per paper.
Every solver counts denoiser evaluations (``nfe``, through the prior) and
backward passes (``n_backward``); a callback receives each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..ops import Operator
from ..priors import Prior
from ..rng import Generators, noise_like, randn
from .projection import DiffStateGrad


@dataclass
class StepInfo:
    step: int
    total: int
    sigma: float
    x0: torch.Tensor  # current estimate of the clean sample (model space)


@dataclass
class Result:
    """Restored images in ``[0, 1]`` and the cost of getting them (per image of the batch)."""

    images: torch.Tensor
    model: torch.Tensor  # final sample in the prior's model space (unclamped)
    nfe: int
    n_backward: int
    extra: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[StepInfo], None]


def per_image_sq_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).pow(2).sum(1)


def learned_noise_std(v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """The ancestral step's noise std (VE units) from a learned-range variance output ``v`` in ``[-1, 1]``.

    guided-diffusion (``p_mean_variance``, learned_range): ``log var = f log beta_t + (1 - f) log beta_tilde_t``
    with ``f = (v + 1) / 2``, for the step's own ``beta_t = 1 - alpha_bar_t / alpha_bar_next`` (respaced
    when the grid skips timesteps) and ``beta_tilde_t = beta_t (1 - alpha_bar_next) / (1 - alpha_bar_t)``.
    A VP variance is a VE variance times ``alpha_bar_next = 1 / (1 + sigma_next^2)``.
    """
    a_t, a_n = 1.0 / (1.0 + sigma**2), 1.0 / (1.0 + sigma_next**2)
    beta = 1.0 - a_t / a_n
    beta_tilde = beta * (1.0 - a_n) / (1.0 - a_t)
    f = (v + 1) / 2  # unclamped, as guided-diffusion
    log_var = f * math.log(beta) + (1 - f) * math.log(beta_tilde)
    return (0.5 * log_var).exp() * math.sqrt(1.0 + sigma_next**2)


def ancestral_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float, noise: torch.Tensor | None,
                   eta: float = 1.0, noise_std: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM step from ``sigma`` to ``sigma_next`` with stochasticity ``eta`` (VE form).

    ``eta = 1`` is DDPM's ancestral step, the Gaussian posterior
    ``q(x_next | x, x0)``: mean ``x0 + (sigma_next^2 / sigma^2) (x - x0)``,
    variance ``sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2``.  ``eta = 0``
    is deterministic DDIM.  (In VP units these are DDPM's ``mu_tilde``,
    ``beta_tilde`` and DDIM's ``sigma_t(eta)``, divided by ``sqrt(alpha_bar)``.)
    ``noise_std`` (with ``eta = 1``) replaces ``beta_tilde``'s std by a learned one around the same mean,
    as guided-diffusion's ``p_sample`` does for a learned-range model.
    """
    if sigma_next <= 0:
        return x0
    if noise_std is not None:
        mean = x0 + (sigma_next**2 / sigma**2) * (x - x0)
        return mean + noise_std * noise
    up = eta * sigma_next * math.sqrt(max(sigma**2 - sigma_next**2, 0.0)) / sigma
    down = math.sqrt(max(sigma_next**2 - up**2, 0.0))
    eps = (x - x0) / sigma
    out = x0 + down * eps
    if up > 0:
        out = out + up * noise
    return out


class MaskedAdamW:
    """AdamW (PyTorch's defaults: betas 0.9/0.999, eps 1e-8, weight decay 0.01) on a batch of
    images where each image can be frozen on its own, so that early stopping of one image never
    changes another's trajectory (a batch-wide optimiser would)."""

    def __init__(self, param: torch.Tensor, lr: float, weight_decay: float = 0.01, betas=(0.9, 0.999), eps=1e-8):
        self.p, self.lr, self.wd, self.betas, self.eps = param, lr, weight_decay, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    @torch.no_grad()
    def step(self, grad: torch.Tensor, active: torch.Tensor) -> None:
        self.t += 1
        b1, b2 = self.betas
        a = active.reshape(-1, *([1] * (grad.dim() - 1))).to(grad.dtype)
        self.m.mul_(1 - a * (1 - b1)).add_(a * (1 - b1) * grad)
        self.v.mul_(1 - a * (1 - b2)).add_(a * (1 - b2) * grad * grad)
        mhat = self.m / (1 - b1**self.t)
        vhat = self.v / (1 - b2**self.t)
        self.p.mul_(1 - a * self.lr * self.wd)
        self.p.sub_(a * self.lr * mhat / (vhat.sqrt() + self.eps))


class Solver:
    """Base class: ``run`` is the loop; subclasses give ``sigmas`` and ``step``.

    ``defaults`` lists every hyperparameter with its default; ``task_defaults``
    overrides some of them per task key (``inpaint_box``, ``superres``, ...),
    as the papers' codes do.  Unknown hyperparameters are rejected.
    """

    name = "solver"
    paper = ""
    gradient_guided = True  # supports DiffStateGrad
    linear_only = False
    defaults: dict[str, Any] = {}
    task_defaults: dict[str, dict[str, Any]] = {}
    latent_defaults: dict[str, Any] = {}  # replace the (pixel) task defaults on a latent prior
    choices: dict[str, tuple] = {}  # hyperparameters that take one of a few values
    default_period = 1  # DiffStateGrad's F for this solver
    # the measurement-guidance step size(s): what `restore bench` scales in a step-size sweep
    guidance_keys: tuple[str, ...] = ()
    decode_result = True  # run() decodes the final sample (False: the subclass's run does, after refining it)
    # Bumped when a change alters the method's results (a fix, a new default): `restore bench` reuses a
    # finished cell only at its method's current revision, and its tables mark older cells.
    revision = 1

    def __init__(self, prior: Prior, op: Operator, diffstategrad: DiffStateGrad | None = None, **hparams):
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown hyperparameter(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(self.defaults))}")
        if diffstategrad is not None and not self.gradient_guided:
            raise ValueError(f"{self.name} has no measurement gradient for DiffStateGrad to project")
        if self.linear_only and not op.linear:
            raise ValueError(f"{self.name} needs a linear operator; {op.name} is not")
        self.prior, self.op, self.dsg = prior, op, diffstategrad
        for key, allowed in self.choices.items():
            if key in hparams and hparams[key] not in allowed:
                raise ValueError(f"{self.name}: {key} must be one of {', '.join(map(str, allowed))}")
        self.hp = {**self.defaults, **self.defaults_for(prior, op.task_key), **hparams}
        self.n_backward = 0

    @classmethod
    def method_revision(cls, task: str, space: str = "pixel") -> int:
        """The revision of this method's results on ``task`` (a task name: ``"phase-retrieval"``) with a
        ``space`` model; a subclass whose change touched one task or space only overrides this."""
        return cls.revision

    @classmethod
    def tuned_steps(cls, space: str, steps_key: str):
        """The number of steps the method's step sizes are tuned for on a ``space`` model (None: it has none)."""
        return cls.defaults.get(steps_key) if cls.guidance_keys else None

    def defaults_for(self, prior: Prior, task_key: str) -> dict:
        """Per-task (and per-model) overrides of ``defaults``, as the papers' codes set them."""
        return self.task_defaults.get(task_key, {}) if prior.space == "pixel" else self.latent_defaults

    # -- per-paper ------------------------------------------------------------
    def sigmas(self) -> torch.Tensor:
        raise NotImplementedError

    def step(self, i: int, x: torch.Tensor, y: torch.Tensor, sigma: float, sigma_next: float,
             gens: Generators) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: returns ``(x_next, x0_estimate)``."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------
    def residual(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y - A(D(x0))`` in the reference codes' units (see ``Operator.residual_scale``)."""
        return self.op.residual_scale * (y - self.op.A(self.prior.decode(x0)))

    def ddim_next(self, x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float, gens: Generators,
                  eta: float = 1.0, var: torch.Tensor | None = None) -> torch.Tensor:
        """The unconditional step ``x'_next`` (DDPM ancestral for ``eta = 1``), noise from the images' generators;
        ``var``: a learned-range variance output, used for the noise of a DDPM step (``eta = 1``)."""
        x0 = x0.detach()
        noise = noise_like(x0, gens) if sigma_next > 0 and eta > 0 else None
        std = learned_noise_std(var.detach(), sigma, sigma_next) if var is not None and eta == 1 and sigma_next > 0 else None
        return ancestral_step(x.detach(), x0, sigma, sigma_next, noise, eta, noise_std=std)

    def denoise(self, x: torch.Tensor, sigma, clip: bool | None = None) -> torch.Tensor:
        """The prior's ``x0``; ``clip`` overrides a pixel prior's clipping to ``[-1, 1]`` for this call (None:
        the prior's own), for solvers whose reference code does not clip (DDRM, DDS)."""
        current = getattr(self.prior, "clip", None)
        if clip is None or current is None or current == clip:
            return self.prior.denoise(x, sigma)
        self.prior.clip = clip
        try:
            return self.prior.denoise(x, sigma)
        finally:
            self.prior.clip = current

    def grad(self, out: torch.Tensor, wrt: torch.Tensor, grad_outputs=None) -> torch.Tensor:
        self.n_backward += 1
        (g,) = torch.autograd.grad(out, wrt, grad_outputs=grad_outputs)
        return g

    def init_x(self, y: torch.Tensor, gens: Generators, sigma_max: float) -> torch.Tensor:
        shape = self.prior.model_shape(self.op.in_shape)
        return sigma_max * randn(shape, gens, device=y.device, dtype=y.dtype)

    def run(self, y: torch.Tensor, gens: Generators, callback: Callback | None = None) -> Result:
        if y.shape[0] != len(gens):
            raise ValueError(f"{y.shape[0]} measurements but {len(gens)} generators")
        nfe0 = self.prior.nfe
        sig = [float(s) for s in self.sigmas()]
        x = self.init_x(y, gens, sig[0])
        x0 = x
        for i in range(len(sig) - 1):
            with torch.enable_grad():  # guidance differentiates the denoiser even if the caller disabled grad
                x, x0 = self.step(i, x, y, sig[i], sig[i + 1], gens)
            x, x0 = x.detach(), x0.detach()
            if callback is not None:
                callback(StepInfo(i, len(sig) - 1, sig[i], x0))
        images = None  # a solver that refines the final sample (ReSample) decodes its own result
        if self.decode_result:
            with torch.no_grad():
                images = self.prior.decode(x).clamp(0, 1)
        return Result(images, x, self.prior.nfe - nfe0, self.n_backward, {})

    def params(self) -> dict:
        return {"method": self.name, **self.hp, "diffstategrad": self.dsg_record(self.dsg, self.hp)}

    @classmethod
    def dsg_default_period(cls, hparams: dict) -> int:
        """DiffStateGrad's period F when none is given (``hparams``: the given hyperparameters)."""
        return cls.default_period

    @classmethod
    def dsg_record(cls, dsg, hparams: dict) -> dict | None:
        """The DiffStateGrad settings this method runs with (``hparams``: the given ones over
        ``defaults``), as metrics.json records them; a method that overrides some says so here."""
        return None if dsg is None else dsg.params()


__all__ = ["Solver", "Result", "StepInfo", "Callback", "ancestral_step", "learned_noise_std",
           "per_image_sq_norm"]
