"""Deblurring: ``y = k * x`` (a true 2-D convolution, per channel).

Borders: the image is extended by half the kernel size before convolving and
the output is cropped back to ``H x W``.  ``border="reflect"`` (default)
mirrors the image without repeating the edge pixel, as DPS's
``nn.ReflectionPad2d`` does; ``"circular"`` wraps around (the operator is then
diagonal in Fourier and has an exact closed-form pseudo-inverse);
``"zeros"`` pads with black.  The extension is done by index maps, so it works
even when the kernel is larger than the image (DPS's padding layer fails
there).  Convolution is computed with FFTs of the extended image, which is
exact and much faster than a direct 61x61 convolution.

Kernels (``[B, 1, k, k]``, one per image, summing to 1):

* ``gaussian_kernel``: 61x61, sigma 3.0 (DPS, DiffStateGrad), built as DPS's
  code does (see its docstring);
* ``motion_kernel``: 61x61, intensity 0.5, a random camera-shake trajectory of
  the kind DPS draws with the ``motionblur`` package (re-implemented here,
  see its docstring);
* ``uniform_kernel``: a box average (default 9x9, as DDRM and PiGDM);
* ``kernel_from_file``: a grey image or ``.npy`` array, normalised to sum 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..rng import Generators
from .base import DEFAULT_SIGMA_Y, LinearOperator

BORDERS = ("reflect", "circular", "zeros")


def _index_map(n: int, pad: int, mode: str) -> torch.Tensor:
    idx = np.arange(-pad, n + pad)
    if mode == "circular":
        idx = np.mod(idx, n)
    elif mode == "reflect":
        if n == 1:
            idx = np.zeros_like(idx)
        else:  # mirror without repeating the edge, period 2(n-1)
            period = 2 * (n - 1)
            idx = np.mod(idx, period)
            idx = np.where(idx >= n, period - idx, idx)
    else:
        raise ValueError(f"unknown border {mode!r}")
    return torch.from_numpy(idx.astype(np.int64))


class Blur(LinearOperator):
    name = "deblur"

    def __init__(self, kernel: torch.Tensor, in_shape, sigma_y: float = DEFAULT_SIGMA_Y,
                 border: str = "reflect", kind: str = "custom"):
        super().__init__(in_shape, sigma_y)
        if kernel.dim() == 2:
            kernel = kernel[None, None]
        if kernel.dim() != 4 or kernel.shape[1] != 1:
            raise ValueError(f"kernel must be [k, k] or [B, 1, k, k], got {tuple(kernel.shape)}")
        if border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
        kh, kw = kernel.shape[-2:]
        # an even-sized kernel gets a zero row/column so that it has a centre
        kernel = torch.nn.functional.pad(kernel, (0, 1 - kw % 2, 0, 1 - kh % 2))
        self.register_buffer("kernel", kernel.to(torch.float32))
        self.border, self.kind = border, kind
        _, h, w = self.in_shape
        self.ph, self.pw = self.kernel.shape[-2] // 2, self.kernel.shape[-1] // 2
        if border != "zeros":
            self.register_buffer("ih", _index_map(h, self.ph, border), persistent=False)
            self.register_buffer("iw", _index_map(w, self.pw, border), persistent=False)

    def _extend(self, x):
        if self.border == "zeros":
            return torch.nn.functional.pad(x, (self.pw, self.pw, self.ph, self.ph))
        return x[..., self.ih, :][..., self.iw]

    def A(self, x):  # noqa: N802
        _, _, h, w = x.shape
        xp = self._extend(x)
        hp, wp = xp.shape[-2:]
        kf = torch.fft.rfft2(self.kernel.to(x.dtype), s=(hp, wp))
        out = torch.fft.irfft2(torch.fft.rfft2(xp) * kf, s=(hp, wp))
        return out[..., 2 * self.ph:2 * self.ph + h, 2 * self.pw:2 * self.pw + w]

    def _centered_otf(self, dtype):
        """Transfer function of the circular convolution on ``H x W`` (circular border)."""
        _, h, w = self.in_shape
        k = self.kernel.to(dtype)
        kh, kw = k.shape[-2:]
        ii = (torch.arange(kh, device=k.device) - self.ph) % h  # wraps kernels larger than the image
        jj = (torch.arange(kw, device=k.device) - self.pw) % w
        flat = (ii[:, None] * w + jj[None, :]).reshape(-1)
        kp = torch.zeros(k.shape[0], 1, h * w, dtype=dtype, device=k.device)
        kp.index_add_(-1, flat, k.reshape(k.shape[0], 1, -1))
        kp = kp.reshape(k.shape[0], 1, h, w)
        return torch.fft.fft2(kp)

    def A_dagger(self, y):  # noqa: N802
        if self.border != "circular":
            return super().A_dagger(y)
        otf = self._centered_otf(y.dtype)
        mag2 = otf.abs() ** 2
        keep = mag2 > 1e-10 * mag2.amax(dim=(-2, -1), keepdim=True)
        inv = torch.where(keep, otf.conj() / torch.where(keep, mag2, torch.ones_like(mag2)), torch.zeros_like(otf))
        return torch.fft.ifft2(torch.fft.fft2(y) * inv).real

    def params(self):
        return {**super().params(), "kernel": self.kind, "kernel_size": list(self.kernel.shape[-2:]),
                "border": self.border}

    def select(self, idx):
        k = self.kernel if self.kernel.shape[0] == 1 else self.kernel[idx]
        return Blur(k, self.in_shape, self.sigma_y, self.border, self.kind)


def gaussian_kernel(size: int = 61, sigma: float = 3.0) -> torch.Tensor:
    """DPS's kernel: ``scipy.ndimage.gaussian_filter`` of a centred impulse, i.e. the
    outer product of a sampled 1-D Gaussian truncated at ``int(4 sigma + 0.5)``
    pixels (radius 12 for sigma 3), normalised to sum 1 and zero-padded to ``size``."""
    radius = min(int(4.0 * sigma + 0.5), (size - 1) // 2)
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    k = torch.zeros(size, size, dtype=torch.float64)
    c = (size - 1) // 2
    k[c - radius:c + radius + 1, c - radius:c + radius + 1] = torch.outer(g, g)
    return (k / k.sum()).float()[None, None]


def uniform_kernel(size: int = 9) -> torch.Tensor:
    return torch.full((1, 1, size, size), 1.0 / size**2)


def motion_kernel(gens: Generators, size: int = 61, intensity: float = 0.5) -> torch.Tensor:
    """Random camera-shake kernels, one per generator.

    Re-implements the trajectory model of the ``motionblur`` package that DPS
    uses (``Kernel(size=(61, 61), intensity=0.5)``): on a canvas twice the
    kernel size, a path of random steps (lengths ~ Beta(1, 30) of the
    diagonal, scaled by ``1 - intensity``, up to a total length drawn from
    ``0.75 * diagonal * (U(0,1) + U(0, intensity^2))``) heads in directions
    drawn from a triangular law on ``[0, max_angle + 0.1]`` (mode
    ``intensity * max_angle``, ``max_angle ~ U(0, intensity * pi)``) with the
    sign of the previous direction, flipped with probability ~ Beta(2, 20).  The path
    is centred on its centre of mass, rotated by a random angle, drawn as a
    line of width ``diagonal / 150``, blurred by a Gaussian of radius
    ``0.01 * diagonal``, resized to the kernel size with Lanczos and
    normalised to sum 1.  Randomness comes from the image's generator (DPS
    draws from numpy's global state and shares one kernel across the run).
    """
    from PIL import Image, ImageDraw, ImageFilter

    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"motion intensity must be in [0, 1], got {intensity}")
    out = []
    for g in gens:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=g)))
        big, eps = 2 * size, 0.1
        diag = math.sqrt(2) * big
        max_len = 0.75 * diag * (rng.uniform() + rng.uniform(0, intensity**2))
        steps: list[float] = []
        while sum(steps) < max_len:
            step = rng.beta(1, 30) * (1 - intensity + eps) * diag
            if step < max_len:
                steps.append(step)
        max_angle = rng.uniform(0, intensity * math.pi)
        jitter = rng.beta(2, 20)
        angles = [rng.uniform(-max_angle, max_angle)]
        while len(angles) < len(steps):
            a = rng.triangular(0, intensity * max_angle, max_angle + eps)
            sign = np.sign(angles[-1]) or 1.0
            angles.append(-a * sign if rng.uniform() < jitter else a * sign)
        path = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
        path = (path - path.mean()) * np.exp(1j * rng.uniform(0, math.pi)) + (big + 1j * big) / 2
        img = Image.new("L", (big, big))
        ImageDraw.Draw(img).line([(p.real, p.imag) for p in path], fill=255, width=max(1, int(diag / 150)))
        img = img.filter(ImageFilter.GaussianBlur(radius=int(diag * 0.01)))
        img = img.resize((size, size), resample=Image.LANCZOS)
        k = np.asarray(img, dtype=np.float64)
        if k.sum() <= 0:  # degenerate path: fall back to a delta
            k = np.zeros((size, size))
            k[size // 2, size // 2] = 1.0
        out.append(torch.from_numpy(k / k.sum()).float())
    return torch.stack(out)[:, None]


def kernel_from_file(path) -> torch.Tensor:
    """A blur kernel from a ``.npy`` array or a grey image, normalised to sum 1."""
    from pathlib import Path

    p = Path(path)
    if p.suffix.lower() == ".npy":
        k = np.load(p, allow_pickle=False).astype(np.float64)
    else:
        from PIL import Image

        k = np.asarray(Image.open(p).convert("F"), dtype=np.float64)
    if k.ndim != 2 or k.min() < 0 or k.sum() <= 0:
        raise ValueError(f"{p}: a kernel must be a 2-D non-negative array with a positive sum")
    return torch.from_numpy(k / k.sum()).float()[None, None]
