"""Deblurring: ``y = k * x`` (a true 2-D convolution, per channel).

Borders: the image is extended by half the kernel size before convolving and
the output is cropped back to ``H x W``.  ``border="reflect"`` (default)
mirrors the image without repeating the edge pixel, as DPS's
``nn.ReflectionPad2d`` does; ``"circular"`` wraps around (the operator is then
diagonal in Fourier and has an exact closed-form pseudo-inverse);
``"zeros"`` pads with black.  The extension is done by index maps, so it works
even when the kernel is larger than the image (DPS's padding layer fails
there).  The convolution of the extended image is computed with FFTs of a
zero-padded grid for kernels of 9x9 and more (exact up to rounding, ~30x faster
than a direct 61x61 convolution on a CPU) and with ``conv2d`` below
(``Blur(method=...)`` forces one; docs/performance.md has the timings).  The
adjoint is explicit, and ``solve_AAt`` (PiGDM) is closed-form for the circular
border and preconditioned CG for the others.

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
import torch.nn.functional as F

from ..rng import Generators
from .base import DEFAULT_SIGMA_Y, LinearOperator, _per_image, cg, default_tol

BORDERS = ("reflect", "circular", "zeros")
METHODS = ("auto", "fft", "direct")
# "auto" convolves with FFTs from this many kernel taps (kh * kw) on: below it PyTorch's direct
# convolution is faster (measured on CPU, see docs/performance.md; the crossover is ~7x7 to 9x9)
FFT_MIN_TAPS = 64


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


def fft_size(n: int) -> int:
    """The smallest length ``>= n`` whose prime factors are all 2, 3, 5 or 7 (fast for every FFT library)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


class _Linear(torch.autograd.Function):
    """``forward(x)`` whose vector-Jacobian product is ``adjoint(g)`` (itself differentiable the same way),
    so that gradients through the operator cost one explicit adjoint, not autograd's replay."""

    @staticmethod
    def forward(ctx, x, forward, adjoint):
        ctx.fns = (forward, adjoint)
        return forward(x)

    @staticmethod
    def backward(ctx, g):
        forward, adjoint = ctx.fns
        return _Linear.apply(g, adjoint, forward), None, None


class Blur(LinearOperator):
    """``A x = k * x`` per channel, with the image extended by the border rule first.

    ``method`` chooses how the (linear, non-circular) convolution of the extended image is
    computed; every method computes the same operator:

    * ``"direct"``: ``conv2d`` with the flipped kernel (with the kernel on the zero-padded
      measurement for the adjoint);
    * ``"fft"``: products of real FFTs of a zero-padded grid of at least the extended size, so
      that no output pixel that is kept wraps around (the result equals the direct
      convolution up to floating-point rounding, ~1e-7 of the image's range in float32);
    * ``"auto"`` (default): FFT for kernels of ``FFT_MIN_TAPS`` taps or more, else direct.

    ``A_adjoint`` is the explicit transpose of the same composition (zero-embed, correlate,
    fold the border extension back with ``index_add``), exact up to rounding; gradients
    through ``A`` use it too.
    """

    name = "deblur"

    def __init__(self, kernel: torch.Tensor, in_shape, sigma_y: float = DEFAULT_SIGMA_Y,
                 border: str = "reflect", kind: str = "custom", method: str = "auto"):
        super().__init__(in_shape, sigma_y)
        if kernel.dim() == 2:
            kernel = kernel[None, None]
        if kernel.dim() != 4 or kernel.shape[1] != 1:
            raise ValueError(f"kernel must be [k, k] or [B, 1, k, k], got {tuple(kernel.shape)}")
        if border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        kh, kw = kernel.shape[-2:]
        # an even-sized kernel gets a zero row/column so that it has a centre
        kernel = torch.nn.functional.pad(kernel, (0, 1 - kw % 2, 0, 1 - kh % 2))
        self.register_buffer("kernel", kernel.to(torch.float32))
        self.border, self.kind, self.method = border, kind, method
        _, h, w = self.in_shape
        self.ph, self.pw = self.kernel.shape[-2] // 2, self.kernel.shape[-1] // 2
        if border != "zeros":
            self.register_buffer("ih", _index_map(h, self.ph, border), persistent=False)
            self.register_buffer("iw", _index_map(w, self.pw, border), persistent=False)
        self._kf_cache: dict = {}

    # -- the border extension E and its transpose ---------------------------------------
    def _extend(self, x):
        if self.border == "zeros":
            return torch.nn.functional.pad(x, (self.pw, self.pw, self.ph, self.ph))
        return x[..., self.ih, :][..., self.iw]

    def _extend_adjoint(self, g):
        """``E^T g``: every extended pixel is added back to the pixel it copies."""
        _, h, w = self.in_shape
        if self.border == "zeros":
            return g[..., self.ph:self.ph + h, self.pw:self.pw + w]
        cols = g.new_zeros(*g.shape[:-1], w).index_add_(g.dim() - 1, self.iw, g)
        return cols.new_zeros(*g.shape[:-2], h, w).index_add_(g.dim() - 2, self.ih, cols)

    # -- the valid convolution K of the extended image, and K^T ---------------------------
    def uses_fft(self) -> bool:
        if self.method != "auto":
            return self.method == "fft"
        return self.kernel.shape[-2] * self.kernel.shape[-1] >= FFT_MIN_TAPS

    def _fft_grid(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        return fft_size(h + 2 * self.ph), fft_size(w + 2 * self.pw)

    def _kernel_fft(self, dtype, device):
        """``rfft2`` of the kernel on the FFT grid, cached per dtype and device."""
        key = (dtype, device, self.kernel._version, self.kernel.data_ptr())
        kf = self._kf_cache.get(key)
        if kf is None:
            kf = torch.fft.rfft2(self.kernel.to(device=device, dtype=dtype), s=self._fft_grid())
            self._kf_cache = {key: kf}  # the last one only: a kernel changed in place is recomputed
        return kf

    def _direct_weight(self, dtype, batch):
        k = self.kernel.to(dtype).flip(-2, -1)  # conv2d correlates
        c = self.in_shape[0]
        if k.shape[0] == 1:
            return k, 1
        if k.shape[0] != batch:
            raise ValueError(f"{k.shape[0]} kernels for a batch of {batch} images")
        return k.expand(batch, c, *k.shape[-2:]).reshape(batch * c, 1, *k.shape[-2:]), batch * c

    def _conv(self, xp):
        """Linear convolution of the extended image, cropped to the ``H x W`` pixels that see no padding of it."""
        _, h, w = self.in_shape
        b, c, hp, wp = xp.shape
        if self.uses_fft():
            nh, nw = self._fft_grid()
            out = torch.fft.irfft2(torch.fft.rfft2(xp, s=(nh, nw)) * self._kernel_fft(xp.dtype, xp.device), s=(nh, nw))
            return out[..., 2 * self.ph:2 * self.ph + h, 2 * self.pw:2 * self.pw + w]
        weight, groups = self._direct_weight(xp.dtype, b)
        if groups == 1:
            return F.conv2d(xp.reshape(b * c, 1, hp, wp), weight).reshape(b, c, h, w)
        return F.conv2d(xp.reshape(1, b * c, hp, wp), weight, groups=groups).reshape(b, c, h, w)

    def _conv_adjoint(self, y):
        """``K^T y``: zero-embedding into the extended grid, then correlation with the kernel."""
        _, h, w = self.in_shape
        b, c = y.shape[:2]
        hp, wp = h + 2 * self.ph, w + 2 * self.pw
        if self.uses_fft():
            nh, nw = self._fft_grid()
            yp = y.new_zeros(b, c, nh, nw)
            yp[..., 2 * self.ph:2 * self.ph + h, 2 * self.pw:2 * self.pw + w] = y
            out = torch.fft.irfft2(torch.fft.rfft2(yp) * self._kernel_fft(y.dtype, y.device).conj(), s=(nh, nw))
            return out[..., :hp, :wp]
        # correlation with the kernel = conv2d with the flipped-back kernel on y padded by (k - 1)
        # (much faster than conv_transpose2d on CPU)
        weight, groups = self._direct_weight(y.dtype, b)
        yp = F.pad(y, (2 * self.pw, 2 * self.pw, 2 * self.ph, 2 * self.ph))
        weight = weight.flip(-2, -1)
        if groups == 1:
            return F.conv2d(yp.reshape(b * c, 1, *yp.shape[-2:]), weight).reshape(b, c, hp, wp)
        return F.conv2d(yp.reshape(1, b * c, *yp.shape[-2:]), weight, groups=groups).reshape(b, c, hp, wp)

    def _apply_A(self, x):  # noqa: N802
        return self._conv(self._extend(x))

    def _apply_At(self, y):  # noqa: N802
        return self._extend_adjoint(self._conv_adjoint(y))

    def A(self, x):  # noqa: N802
        return _Linear.apply(x, self._apply_A, self._apply_At)

    def A_adjoint(self, y):  # noqa: N802
        """``A^T y``, explicit (see the class docstring)."""
        return _Linear.apply(y, self._apply_At, self._apply_A)

    # -- closed forms of the circular border, preconditioners of the others ------------------
    def _centered_otf(self, dtype, grid: tuple[int, int] | None = None):
        """Transfer function ``[B, 1, h, w]`` of the circular convolution by the kernel on the ``grid``
        torus (default ``H x W``: the exact operator of the circular border); a kernel larger than the
        grid wraps around."""
        h, w = grid if grid is not None else self.in_shape[1:]
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

    def cosine_otf2(self, dtype) -> torch.Tensor:
        """``|otf|^2`` at the DCT-I frequencies ``(k / 2(H-1), l / 2(W-1))``, averaged over ``l -> -l``:
        ``[B, 1, H, W]``, the DCT-I diagonal that approximates ``A^T A`` and ``A A^T``.

        For a kernel symmetric in both axes (Gaussian, box) and the reflect border, ``A`` is a
        circular convolution of the whole-sample symmetric extension on the ``2(H-1) x 2(W-1)``
        torus, so it is diagonal in the DCT-I basis (up to the weights of the first and last rows
        and columns) with these eigenvalues squared (the average is then a no-op).  For other
        kernels (motion) and borders it is an approximation that, unlike the circular one, does
        not wrap the image around.
        """
        _, h, w = self.in_shape
        otf2 = self._centered_otf(dtype, (2 * (h - 1), 2 * (w - 1))).abs() ** 2
        flipped = torch.roll(otf2.flip(-1), 1, dims=-1)  # otf2 at (k, -l)
        return ((otf2 + flipped) / 2)[..., :h, :w]

    def _gram_preconditioner(self, r2, s2, dtype):
        """An SPD approximation of ``(r2 A A^T + s2)^{-1}``: exact for the circular border (Fourier), the
        DCT-I diagonal of :meth:`cosine_otf2` for the others (exact away from the image's edges for the
        reflect border and a mirror-symmetric kernel)."""
        _, h, w = self.in_shape
        if self.border != "circular" and min(h, w) > 1:
            mult = 1.0 / (r2 * self.cosine_otf2(dtype) + s2)
            uh, uw = dct1_matrix(h, dtype, self.kernel.device), dct1_matrix(w, dtype, self.kernel.device)
            return lambda u: uh @ ((uh @ u @ uw) * mult) @ uw
        mult = 1.0 / (r2 * self._centered_otf(dtype).abs() ** 2 + s2)
        return lambda u: torch.fft.ifft2(torch.fft.fft2(u) * mult).real

    def solve_AAt(self, v, r2, s2):  # noqa: N802
        """``(r2 A A^T + s2 I)^{-1} v``.  Circular border: closed form (``A A^T`` is diagonal in Fourier,
        exact).  Other borders: CG (``default_tol``, at most 100 iterations) preconditioned by the DCT-I
        diagonal of :meth:`_gram_preconditioner` (for a Gaussian kernel a few times fewer iterations than
        plain CG; for motion kernels about as many: the borders dominate).  With a small ``s2`` the
        system is ill-conditioned and CG may stop at the cap, as before."""
        r2 = _per_image(r2, v)
        if float(s2) <= 0:
            return super().solve_AAt(v, r2, s2)
        precond = self._gram_preconditioner(r2, s2, v.dtype)
        if self.border == "circular":
            return precond(v)
        return cg(lambda u: r2 * self.A(self.A_adjoint(u)) + s2 * u, v, iters=100, tol=default_tol(v.dtype),
                  precond=precond)

    def params(self):
        return {**super().params(), "kernel": self.kind, "kernel_size": list(self.kernel.shape[-2:]),
                "border": self.border}

    def select(self, idx):
        k = self.kernel if self.kernel.shape[0] == 1 else self.kernel[idx]
        return Blur(k, self.in_shape, self.sigma_y, self.border, self.kind, self.method)


def dct1_matrix(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The orthonormal DCT-I matrix of size ``n >= 2``: symmetric and orthogonal, so its own inverse."""
    k = torch.arange(n, dtype=torch.float64)
    c = torch.ones(n, dtype=torch.float64)
    c[0] = c[-1] = 0.5**0.5
    u = (2.0 / (n - 1)) ** 0.5 * c[:, None] * torch.cos(math.pi * k[:, None] * k[None, :] / (n - 1)) * c[None, :]
    return u.to(device=device, dtype=dtype)


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
