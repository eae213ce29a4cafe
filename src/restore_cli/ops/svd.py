"""The singular value decomposition ``A = U diag(s) V^T`` of restore's linear operators, for DDRM.

DDRM (Kawar et al. 2022, Sec. 3.2 and App. D) works in the spectral space of the degradation:
``x_bar = V^T x`` and ``y_bar = diag(s)^+ U^T y``.  The reference code builds, per degradation,
an object with ``V``, ``Vt``, ``U``, ``Ut`` and ``singulars`` (``functions/svd_replacement.py``);
this module does the same for our operators, built from their public attributes, so that
``U(s * Vt(x))`` is the operator's own ``A(x)`` (``tests/test_ddrm.py`` checks it to ~1e-5).

Layout: the spectral coefficients ``Vt(x)`` keep the image's shape ``[B, C, H, W]`` (V is square),
and ``s`` / ``observed`` broadcast to it.  ``observed`` marks the coefficients that ``U^T y`` has
(the row space, ``min(m, n)`` of them); ``Ut(y)`` puts them there and zeros elsewhere.  Instead of
sorting singular values (the reference code's permutations) every coefficient carries its own.
A singular value under the threshold counts as zero but stays ``observed``, as in the code.

* inpainting (:class:`DiagonalSVD`): ``A = diag(m)``, so ``U = V = I`` and ``s = m``;
* super-resolution and separable blurs (:class:`SeparableSVD`): ``A x = M_h x M_w^T`` with two
  small matrices; the 2-D SVD is the Kronecker product of the two 1-D SVDs (DDRM's ``SRConv``,
  ``Deblurring``, App. D.5).  Bicubic: our operator's exact matrices ``wh``/``ww``; average
  pooling: the block-mean matrix (singular value ``1/f`` per ``f x f`` block, DDRM's
  ``SuperResolution``); blurs: the 1-D convolution matrix of the kernel's rank-1 factor with our
  border rule (reflect without repeating the edge, circular or zeros) folded in.  Singular values of
  the 1-D factors below ``zero`` (DDRM's ``ZERO = 3e-2``) are set to zero, as the code does;
* a blur whose kernel is not separable (motion, most kernel files) with the circular border
  (:class:`FourierSVD`): the 2-D DFT diagonalises it, ``A = F^H diag(otf) F``.  With
  ``V = F^H`` and ``U = F^H diag(otf / |otf|)`` the SVD is complex unitary with ``s = |otf|``;
  the spectra of real images are Hermitian and ``s`` is symmetric, so DDRM's per-coefficient
  update with real coefficients keeps ``V(.)`` real.  Values below ``zero**2`` count as zero.

A non-separable kernel with the reflect or zeros border has no cheap SVD here: :func:`svd_of`
refuses it (a dense SVD of the ``HW x HW`` matrix is too large beyond toy sizes).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Operator
from .blur import Blur
from .inpainting import Inpainting
from .resize import SuperResolution

DEFAULT_ZERO = 3e-2  # DDRM's svd_replacement.py: SRConv and Deblurring zero 1-D singular values below it
SEPARABLE_TOL = 1e-5  # a kernel is separable when its second singular value is below this fraction of the first


class SpectralSVD:
    """``A = U diag(s) V^T`` of one operator, per image of its batch (see the module docstring)."""

    s: torch.Tensor  # singular values, >= 0, broadcastable to the spectral shape
    observed: torch.Tensor  # bool, where U^T y has a coefficient

    def Vt(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - named like the math
        raise NotImplementedError

    def V(self, z: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def Ut(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``U^T y`` in the spectral layout (zero where not ``observed``)."""
        raise NotImplementedError

    def U(self, z: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``U z`` from the spectral layout (only the ``observed`` coefficients count)."""
        raise NotImplementedError

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``U diag(s) V^T x``: the operator as its SVD sees it (with the thresholded values at zero)."""
        return self.U(self.s.to(x.device) * self.Vt(x))

    def singulars(self, like: torch.Tensor) -> torch.Tensor:
        """``s`` as a real tensor of ``like``'s (real) dtype and device."""
        dtype = like.real.dtype if like.is_complex() else like.dtype
        return self.s.to(device=like.device, dtype=dtype)


class DiagonalSVD(SpectralSVD):
    """Inpainting: ``A = diag(m)`` with ``m`` in {0, 1} (DDRM's ``Inpainting``, without its permutation)."""

    def __init__(self, mask: torch.Tensor):
        self.s = mask.to(torch.float64)
        self.observed = mask > 0.5

    def Vt(self, x):  # noqa: N802
        return x

    def V(self, z):  # noqa: N802
        return z

    def Ut(self, y):  # noqa: N802
        return y * self.observed.to(device=y.device, dtype=y.dtype)

    def U(self, z):  # noqa: N802
        return z * self.observed.to(device=z.device, dtype=z.dtype)


class SeparableSVD(SpectralSVD):
    """``A x = M_h x M_w^T`` per channel; ``mh``: ``[K, m, H]`` and ``mw``: ``[K, n, W]`` (``K`` = 1 or the batch).

    ``M = U_1 diag(s_1) V_1^T`` per axis (full ``V_1``); then ``V^T x = V_h^T x V_w``,
    ``U^T y = U_h^T y U_w`` (in the top-left ``m x n`` corner) and ``s[p, q] = s_h[p] s_w[q]``.
    """

    def __init__(self, mh: torch.Tensor, mw: torch.Tensor, zero: float = DEFAULT_ZERO):
        mh, mw = mh.to(torch.float64), mw.to(torch.float64)
        if mh.dim() == 2:
            mh = mh[None]
        if mw.dim() == 2:
            mw = mw[None]
        self.m, self.n = mh.shape[-2], mw.shape[-2]
        self.H, self.W = mh.shape[-1], mw.shape[-1]
        uh, sh, vht = torch.linalg.svd(mh, full_matrices=True)
        uw, sw, vwt = torch.linalg.svd(mw, full_matrices=True)
        sh = torch.where(sh < zero, torch.zeros_like(sh), sh)
        sw = torch.where(sw < zero, torch.zeros_like(sw), sw)
        self._mats = {"uh": uh, "vh": vht.transpose(-1, -2), "uw": uw, "vw": vwt.transpose(-1, -2)}
        self._cache: dict = {}
        k = max(mh.shape[0], mw.shape[0])
        s = torch.zeros(k, 1, self.H, self.W, dtype=torch.float64)
        s[..., :self.m, :self.n] = (sh[:, :, None] * sw[:, None, :])[:, None]
        self.s = s
        self.observed = torch.zeros(1, 1, self.H, self.W, dtype=torch.bool)
        self.observed[..., :self.m, :self.n] = True

    def _get(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """One of the factor matrices as ``[K, 1, ., .]`` in ``like``'s dtype and device (cached)."""
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = self._mats[name].to(device=like.device, dtype=like.dtype)[:, None]
        return self._cache[key]

    def Vt(self, x):  # noqa: N802
        return self._get("vh", x).transpose(-1, -2) @ x @ self._get("vw", x)

    def V(self, z):  # noqa: N802
        return self._get("vh", z) @ z @ self._get("vw", z).transpose(-1, -2)

    def Ut(self, y):  # noqa: N802
        c = self._get("uh", y).transpose(-1, -2) @ y @ self._get("uw", y)
        return torch.nn.functional.pad(c, (0, self.W - self.n, 0, self.H - self.m))

    def U(self, z):  # noqa: N802
        return self._get("uh", z) @ z[..., :self.m, :self.n] @ self._get("uw", z).transpose(-1, -2)


class FourierSVD(SpectralSVD):
    """A circular convolution with transfer function ``otf`` (``[K, 1, H, W]``, complex): ``V^T = F``
    (orthonormal 2-D DFT), ``U^T = diag(conj(otf) / |otf|) F``, ``s = |otf|``."""

    def __init__(self, otf: torch.Tensor, zero: float = DEFAULT_ZERO**2):
        otf = otf.to(torch.complex128)
        mag = otf.abs()
        self.phase = torch.where(mag > 0, otf / torch.where(mag > 0, mag, torch.ones_like(mag)), torch.ones_like(otf))
        self.s = torch.where(mag < zero, torch.zeros_like(mag), mag)
        self.observed = torch.ones(1, 1, *otf.shape[-2:], dtype=torch.bool)

    def _phase(self, like):
        dtype = torch.complex128 if like.dtype in (torch.float64, torch.complex128) else torch.complex64
        return self.phase.to(device=like.device, dtype=dtype)

    def Vt(self, x):  # noqa: N802
        return torch.fft.fft2(x, norm="ortho")

    def V(self, z):  # noqa: N802
        return torch.fft.ifft2(z, norm="ortho").real

    def Ut(self, y):  # noqa: N802
        return torch.fft.fft2(y, norm="ortho") * self._phase(y).conj()

    def U(self, z):  # noqa: N802
        return torch.fft.ifft2(z * self._phase(z), norm="ortho").real


def _border_index(n: int, pad: int, border: str) -> np.ndarray:
    """The pixel each position ``-pad .. n + pad - 1`` of the extended line copies (-1: a zero)."""
    idx = np.arange(-pad, n + pad)
    if border == "circular":
        return np.mod(idx, n)
    if border == "zeros":
        return np.where((idx >= 0) & (idx < n), idx, -1)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)  # reflect without repeating the edge pixel
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def conv_matrix(taps: torch.Tensor, n: int, border: str) -> torch.Tensor:
    """The ``n x n`` matrix of a 1-D convolution (odd ``taps``, centred) of a line extended by ``border``,
    as :class:`Blur` does along one axis: ``out[i] = sum_a taps[k - 1 - a] ext[i + a]``."""
    k = taps.shape[-1]
    idx = _border_index(n, (k - 1) // 2, border)
    m = torch.zeros(n, n, dtype=torch.float64)
    rows = np.repeat(np.arange(n), k)
    src = idx[(np.arange(n)[:, None] + np.arange(k)[None, :]).reshape(-1)]
    w = taps.to(torch.float64).flip(-1).repeat(n)
    keep = torch.from_numpy(src >= 0)
    m.index_put_((torch.from_numpy(rows)[keep], torch.from_numpy(src)[keep]), w[keep], accumulate=True)
    return m


def separable_factors(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(g_h, g_w)`` with ``kernel = outer(g_h, g_w)`` for a ``[kh, kw]`` kernel of rank one (else None)."""
    u, s, vt = torch.linalg.svd(kernel.to(torch.float64))
    if len(s) > 1 and s[1] > SEPARABLE_TOL * s[0]:
        return None
    gh, gw = u[:, 0] * s[0].sqrt(), vt[0] * s[0].sqrt()
    if gh.sum() < 0:
        gh, gw = -gh, -gw
    return gh, gw


def avgpool_matrix(n: int, factor: int) -> torch.Tensor:
    """``[n // factor, n]``: the mean of each block of ``factor`` (the remainder is dropped, as ``avg_pool2d``)."""
    m = torch.zeros(n // factor, n, dtype=torch.float64)
    for i in range(n // factor):
        m[i, i * factor:(i + 1) * factor] = 1.0 / factor
    return m


SUPPORTED = ("inpainting (any mask)", "super-resolution (bicubic or avgpool)",
             "deblurring with a separable kernel (gaussian, uniform) and any border",
             "deblurring with any kernel and --border circular")


def svd_of(op: Operator, zero: float = DEFAULT_ZERO) -> SpectralSVD:
    """The SVD of ``op`` (``ValueError`` naming what works when there is none here)."""
    if isinstance(op, Inpainting):
        return DiagonalSVD(op.mask)
    if isinstance(op, SuperResolution):
        _, h, w = op.in_shape
        if op.filter == "bicubic":
            return SeparableSVD(op.wh, op.ww, zero)
        return SeparableSVD(avgpool_matrix(h, op.factor), avgpool_matrix(w, op.factor), zero)
    if isinstance(op, Blur):
        _, h, w = op.in_shape
        factors = [separable_factors(k[0]) for k in op.kernel]
        if all(f is not None for f in factors):
            mh = torch.stack([conv_matrix(gh, h, op.border) for gh, _ in factors])
            mw = torch.stack([conv_matrix(gw, w, op.border) for _, gw in factors])
            return SeparableSVD(mh, mw, zero)
        if op.border == "circular":
            return FourierSVD(op._centered_otf(torch.float64), zero**2)
        raise ValueError(f"ddrm needs the SVD of the blur: kernel {op.kind!r} is not separable, so it needs "
                         f"--border circular (not {op.border}); supported: {'; '.join(SUPPORTED)}")
    raise ValueError(f"no SVD of the {op.name} operator here; supported: {'; '.join(SUPPORTED)}")


__all__ = ["SpectralSVD", "DiagonalSVD", "SeparableSVD", "FourierSVD", "svd_of", "conv_matrix",
           "separable_factors", "avgpool_matrix", "DEFAULT_ZERO", "SUPPORTED"]
