"""Solvers: one paper per file over a shared loop (``base.py``), and DiffStateGrad (``projection.py``)."""

from .base import Result, Solver, StepInfo
from .daps import DAPS
from .dps import DPS
from .pigdm import PiGDM
from .projection import DiffStateGrad
from .restarts import run_with_restarts

SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (DPS, PiGDM, DAPS)}

__all__ = ["Solver", "Result", "StepInfo", "DPS", "PiGDM", "DAPS", "DiffStateGrad", "SOLVERS", "run_with_restarts"]
