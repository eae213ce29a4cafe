"""ReSample: latent diffusion with hard data consistency (Song et al., ICLR 2024).

PLoRG Algorithm 4 (ReSample) and 5 (with DiffStateGrad), with the schedule and the
inner optimisers of the official code (``resample_sampling``, ``pixel_optimization``,
``latent_optimization``, ``stochastic_resample`` in ReSample's and DiffStateGrad's
``ldm/models/diffusion/*ddim.py``):

1. deterministic DDIM over ``steps`` = 500 uniformly spaced timesteps (eta = 0);
2. after each DDIM step, the code's latent-DPS nudge
   ``z_{t-1} -= dps_scale * alpha_bar_t * grad_{z_t} ||y - A(D(z0_hat(z_t)))||`` (0.5, not in
   Algorithm 4; ``dps_scale=0`` removes it);
3. every ``every`` = 10 DDIM indices ``0 < index <= N - N // 3`` (the first third of the
   trajectory is plain DDIM), hard data consistency:

   * look ahead ``lookahead`` = 5 unconditional DDIM steps and take the Tweedie estimate there
     (the code's "time travel");
   * middle third (``index >= N // 3``): pixel-space optimisation
     ``x = argmin ||y - A(x)||^2`` from ``D(z0_hat)`` (AdamW, ``pixel_lr`` = 1e-2 in ``[-1, 1]``
     units, at most ``pixel_iters`` = 2000 steps, stop when the MSE is below ``eps^2``), then
     ``z0_y = E(x)``;
   * last third: latent-space optimisation ``z0_y = argmin ||y - A(D(z))||^2`` from ``z0_hat``
     (AdamW, ``latent_lr`` = 5e-3, at most ``latent_iters`` = 500 steps; stop when the MSE is
     below ``eps^2`` or, after 200 steps, when it is above its value 200 steps earlier);
   * stochastic resampling (ReSample Eq. 12) back to the current level ``t``:
     ``z_t ~ N((s^2 sqrt(a_t) z0_y + (1 - a_t) z'_t) / (s^2 + 1 - a_t), s^2 (1 - a_t) / (s^2 + 1 - a_t))``
     with ``s^2 = gamma (1 - a_{t-1}) / (1 - a_t) (1 - a_t / a_{t-1})``, ``gamma`` = 40 (VP units;
     written in VE units below);
4. a final latent-space optimisation of ``z_0``.

The inner optimisers' budgets follow ``steps``: ``latent_iters`` and ``pixel_iters`` (the code's 500 and 2000,
set for its 500 DDIM steps) are scaled by ``steps / 500`` when they are not given, rounded up, at least
``MIN_ITERS`` = 5 and at most the code's values (:meth:`ReSample.iteration_budget`): 500/2000 at the default
``steps``, 100/400 at ``--steps 100``, 5/8 at ``--steps 2``, so that a quick run stays quick (before, a ``--steps 2``
run still spent 500 latent iterations, each a decoder backward pass, on its final optimisation).  An explicit
``--set latent_iters=N`` / ``--set pixel_iters=N`` is used as given.  Both optimisers also stop early (below).

Losses are MSEs of the residual in the code's ``[-1, 1]`` units; every image has its own
optimiser state and stopping (``MaskedAdamW``), so a batch gives each image the result it
gets alone.

DiffStateGrad, two configurations (``dsg_stages``):

* ``"code"`` (default): the released DiffStateGrad script with its defaults (the tables' period
  is not written down: the script takes ``--period`` as a flag, default 1, while App. C.1 says
  F = 5): both hard data consistency stages are projected, every ``period``-th iteration
  (default 1: every iteration), with the SVD of the state after the look-ahead (the latent stage)
  and of its decoded image (the pixel stage, in the code's ``[-1, 1]`` units);
* ``"paper"``: PLoRG Algorithm 5 / DiffStateGrad App. C.4: the SVD of the diffusion state
  ``z'_t``, once per resampling call; only the *latent* optimisation's gradient is projected,
  every ``period``-th iteration (default F = 5, Appendix C.1); the pixel stage is never projected.
  Here ``z'_t`` is the state after the DDIM step *and* the code's DPS nudge (the algorithm has no
  nudge), and the final latent optimisation (the code's, not in the algorithm) is projected with the
  SVD of the final latent, in both configurations.

Choices where paper and code differ (each noted above): the DPS nudge and the look-ahead
are the code's.  The paper's estimate of ``z0`` is Tweedie's ``(z - sqrt(1 - a) eps) / sqrt(a)``;
the code (ReSample's, and DiffStateGrad's, which produced both papers' tables) forms a
``pseudo_x0 = (z - (1 - a) eps) / sqrt(a)`` (``1 - a`` where Tweedie has its square root, so it
keeps some noise) and uses it, and only it, for the DPS nudge's residual, for the look-ahead's
final estimate and as the start of the hard data consistency optimisation; its DDIM steps use
Tweedie's.  ``tweedie="reference"`` (default, what produced the tables) does exactly that (with
the guidance off it is plain DDIM and samples the prior); ``tweedie="paper"`` uses Tweedie's
estimate everywhere, as the paper's text.

Not followed: the code's look-ahead feeds the network the timestep one DDIM step behind the
alphas it uses (its loop lags by one index), and its DDIM grid is ``1, 1 + c, ...`` (LDM's
``make_ddim_timesteps``) where ours is ``0, c, ...``; both shift levels by a step or two of 1000.
"""

from __future__ import annotations

import math

import torch

from ..rng import noise_like
from .base import MaskedAdamW, Solver
from .projection import projector

MIN_ITERS = 5  # the fewest inner-optimiser iterations a scaled budget gives


class ReSample(Solver):
    name = "resample"
    paper = "Song et al. 2024, Solving Inverse Problems with Latent Diffusion Models via Hard Data Consistency"
    defaults = {"steps": 500, "dps_scale": 0.5, "every": 10, "lookahead": 5, "gamma": 40.0,
                "pixel_lr": 1e-2, "pixel_iters": 2000, "latent_lr": 5e-3, "latent_iters": 500, "eps": 1e-3,
                "tweedie": "reference", "dsg_stages": "code"}
    default_period = 5  # Algorithm 5's F (App. C.1), with dsg_stages=paper; the code's default is 1
    decode_result = False  # run() decodes only the final latent optimisation's result
    guidance_keys = ("latent_lr",)  # the stage DiffStateGrad projects
    choices = {"tweedie": ("paper", "reference"), "dsg_stages": ("code", "paper")}
    # 2: tweedie=reference and dsg_stages=code by default (what produced the tables).  (The inner budgets that
    # follow `steps` change no result at the default steps or with the budgets given; elsewhere the recorded
    # latent_iters/pixel_iters differ, which a resumed run's configuration check already sees.)
    revision = 2

    def __init__(self, prior, op, diffstategrad=None, **hparams):
        super().__init__(prior, op, diffstategrad, **hparams)
        self.n_steps = int(self.hp["steps"])
        for key in ("latent_iters", "pixel_iters"):
            if key not in hparams:  # given: used as it is
                self.hp[key] = self.iteration_budget(self.defaults[key], self.n_steps)

    @classmethod
    def iteration_budget(cls, code_iters: int, steps: int) -> int:
        """An inner optimiser's iterations at ``steps``: the code's ``code_iters`` (set for its 500 steps) scaled by
        ``steps / 500``, rounded up, within ``[MIN_ITERS, code_iters]``."""
        scaled = math.ceil(code_iters * int(steps) / cls.defaults["steps"])
        return min(code_iters, max(MIN_ITERS, scaled))

    def sigmas(self):
        return self.prior.schedule.ddim_sigmas(self.n_steps)

    @classmethod
    def released_code_stages(cls, hparams: dict) -> bool:
        """Whether DiffStateGrad runs as the released code (``dsg_stages=code``) with these hyperparameters."""
        return {**cls.defaults, **hparams}["dsg_stages"] == "code"

    @classmethod
    def dsg_default_period(cls, hparams: dict) -> int:
        return 1 if cls.released_code_stages(hparams) else cls.default_period

    @classmethod
    def dsg_record(cls, dsg, hparams: dict) -> dict | None:
        if dsg is None:
            return None
        code = cls.released_code_stages(hparams)
        return {**dsg.params(), "stages": "pixel+latent (released code)" if code else "latent (Algorithm 5)"}

    # -- pieces ----------------------------------------------------------------------------
    def guide_x0(self, z, x0, sigma):
        """The estimate the guidance uses: the Tweedie ``x0`` (paper), or the code's ``pseudo_x0``
        ``(z_vp - (1 - a) eps) / sqrt(a)``, in VE units ``z - sqrt(1 - a) (z - x0)`` (reference)."""
        if self.hp["tweedie"] != "reference":
            return x0
        a = 1 / (1 + sigma**2)
        return z - math.sqrt(1 - a) * (z - x0)

    def mse(self, img):
        """Per-image mean squared residual (reference units) of images in [0, 1]; needs ``self._y``."""
        r = self.op.residual_scale * (self._y - self.op.A(img))
        return r.flatten(1).pow(2).mean(1)

    def optimize(self, init: torch.Tensor, to_image, lr: float, iters: int, proj=None, window: int | None = None):
        """AdamW on ``init`` (per image) for ``||y - A(to_image(v))||^2``; early stopping as the code."""
        v = init.detach().clone()
        opt = MaskedAdamW(v, lr)
        active = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
        history: list[torch.Tensor] = []
        eps2 = self.hp["eps"] ** 2
        for k in range(int(iters)):
            v.requires_grad_(True)
            loss = self.mse(to_image(v))
            g = self.grad(loss.sum(), v)
            v = v.detach()
            if proj is not None:
                g = proj(g, k)
            opt.p = v
            opt.step(g, active)
            cur = loss.detach()
            active &= cur >= eps2
            if window is not None:
                history.append(cur)
                if len(history) > window:
                    old = history.pop(0)
                    active &= ~(old < cur)
            if not bool(active.any()):
                break
        return v.detach()

    def resample(self, z0_y, z_t, sigma_t, sigma_prev, gens):
        """Stochastic resampling (ReSample Eq. 12) in VE units to level ``sigma_t`` (the DDIM step
        came from ``sigma_prev > sigma_t``); ``a`` are VP alpha-bars."""
        a_t, a_prev = 1 / (1 + sigma_t**2), 1 / (1 + sigma_prev**2)
        s2 = self.hp["gamma"] * (1 - a_t) / (1 - a_prev) * (1 - a_prev / a_t)
        mean = (s2 * z0_y + (1 - a_t) * z_t) / (s2 + 1 - a_t)
        std_vp = math.sqrt(s2 * (1 - a_t) / (s2 + 1 - a_t))
        return mean + std_vp / math.sqrt(a_t) * noise_like(z_t, gens)

    # -- the loop --------------------------------------------------------------------------
    def step(self, i, x, y, sigma, sigma_next, gens):
        self._y = y
        h = self.hp
        n = self.n_steps
        x = x.detach().requires_grad_(True)
        x0 = self.prior.denoise(x, sigma)
        z_next = self.ddim_next(x, x0, sigma, sigma_next, gens, eta=0.0)  # DDIM with the Tweedie estimate
        if h["dps_scale"] > 0:
            norm = self.residual(self.guide_x0(x, x0, sigma), y).flatten(1).norm(dim=1).sum()
            g = self.grad(norm, x)
            a_t = 1 / (1 + sigma**2)
            z_next = z_next - h["dps_scale"] * a_t * math.sqrt((1 + sigma**2) * (1 + sigma_next**2)) * g
        x0 = x0.detach()
        index = n - 1 - i
        if not (0 < index <= n - n // 3 and index % int(h["every"]) == 0):
            return z_next, x0
        # look ahead a few unconditional DDIM steps for a sharper estimate of z0
        sig = self._sigmas
        w, est = z_next, self.guide_x0(x.detach(), x0, sigma)
        with torch.no_grad():
            for k in range(i + 1, min(i + 1 + int(h["lookahead"]), len(sig) - 1)):
                e = self.prior.denoise(w, sig[k])
                est = self.guide_x0(w, e, sig[k])
                w = self.ddim_next(w, e, sig[k], sig[k + 1], gens, eta=0.0)
        code = self.released_code_stages(h)
        if index >= n // 3:  # middle stage: pixel space (projected only as the released code does)
            proj = None
            if self.dsg is not None and code:
                with torch.no_grad():
                    proj = projector(self.dsg, self.prior.decode(w) * 2 - 1)
            pix = self.optimize(self.prior.decode(est) * 2 - 1, lambda v: (v + 1) / 2, h["pixel_lr"], h["pixel_iters"], proj)
            with torch.no_grad():
                z0_y = self.prior.encode((pix + 1) / 2)
        else:  # last stage: latent space
            proj = projector(self.dsg, w if code else z_next)
            z0_y = self.optimize(est, self.prior.decode, h["latent_lr"], h["latent_iters"], proj, window=200)
        z_new = self.resample(z0_y, z_next.detach(), sigma_next, sigma, gens)
        return z_new, z0_y

    def run(self, y, gens, callback=None):
        self._sigmas = [float(s) for s in self.sigmas()]
        res = super().run(y, gens, callback)
        # a final latent-space optimisation of z_0 (the code's last step)
        z0 = self.optimize(res.model, self.prior.decode, self.hp["latent_lr"], self.hp["latent_iters"],
                           projector(self.dsg, res.model), window=200)
        with torch.no_grad():
            res.images = self.prior.decode(z0).clamp(0, 1)
        res.model, res.n_backward = z0, self.n_backward
        return res
