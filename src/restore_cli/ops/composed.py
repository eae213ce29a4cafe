"""Composed measurements (PiGDM Sec. 5.3): ``y = second.A(first.A(x)) + sigma_y * n``.

Modelled on DeepInverse's ``ComposedPhysics`` (``N_k(A_k(... A_1(x)))``: the noise is the last
operator's, added once at the end): here ``sigma_y`` is the composition's own (by default
``second``'s) and the parts' noise is never drawn.

* Linear iff both parts are; then :class:`Composed` builds a :class:`LinearComposed`, whose
  ``A_adjoint`` composes the parts' adjoints in reverse (``A^T = first^T second^T``), and whose
  ``A_dagger`` and ``solve_AAt`` are the exact conjugate-gradient ones of :class:`LinearOperator`
  (``(BA)^+`` is not ``A^+ B^+`` in general).
* ``h_dagger`` is PiGDM's approximation ``h^+ = h_1^+ o ... o h_k^+`` for ``h = h_k o ... o h_1``
  (Sec. 5.3, "for certain measurements, such as low-resolution filtering, JPEG and masking"):
  ``first.h_dagger(second.h_dagger(y))``.  For super-resolution then JPEG it is exact in PiGDM's
  sense, ``h(h^+(y)) = y`` on a measurement, since JPEG's ``h^+`` is the identity on decoded
  images and ``S S^+ = I`` for a downsampling ``S`` with independent rows.
* ``task_key`` is ``first``'s, so the solvers' per-task defaults of the primary task still apply;
  ``residual_scale`` and ``visualize`` are ``second``'s (the final measurement's);
  ``params`` records both parts; ``select`` restricts both to some images.
"""

from __future__ import annotations

from .base import LinearOperator, Operator


class Composed(Operator):
    """``second o first``; see the module docstring.  ``Composed(a, b)`` of two linear operators is a
    :class:`LinearComposed`."""

    name = "composed"

    def __new__(cls, *args, **kwargs):  # (first, second, sigma_y); no arguments when copied or unpickled
        first, second = (list(args) + [kwargs.get("first"), kwargs.get("second")][len(args):])[:2]
        if cls is Composed and first is not None and first.linear and second.linear:
            cls = LinearComposed
        return super().__new__(cls)

    def __init__(self, first: Operator, second: Operator, sigma_y: float | None = None):
        super().__init__(first.in_shape, second.sigma_y if sigma_y is None else sigma_y)
        mid = tuple(first.out_shape)  # (running first.A to see would need its device: a cached network may be elsewhere)
        if tuple(second.in_shape) != mid:
            raise ValueError(f"cannot compose: {first.name} gives {mid}, {second.name} measures {tuple(second.in_shape)}")
        self.first, self.second = first, second
        self.residual_scale = second.residual_scale

    @property
    def out_shape(self):
        return self.second.out_shape

    def A(self, x):  # noqa: N802
        return self.second.A(self.first.A(x))

    def h_dagger(self, y):
        """PiGDM Sec. 5.3: ``first^+(second^+(y))``."""
        return self.first.h_dagger(self.second.h_dagger(y))

    @property
    def has_h_dagger(self) -> bool:
        return self.first.has_h_dagger and self.second.has_h_dagger

    def visualize(self, y):
        return self.second.visualize(y)

    @property
    def task_key(self) -> str:
        return self.first.task_key

    def params(self):
        return {"name": self.name, "task_key": self.task_key, "sigma_y": self.sigma_y,
                "first": self.first.params(), "second": self.second.params()}

    def select(self, idx):
        return Composed(self.first.select(idx), self.second.select(idx), self.sigma_y)


class LinearComposed(Composed, LinearOperator):
    """A composition of two linear operators: linear, with the adjoint composed in reverse."""

    linear = True

    def A_adjoint(self, y):  # noqa: N802
        return self.first.A_adjoint(self.second.A_adjoint(y))

    def h_dagger(self, y):
        return Composed.h_dagger(self, y)
