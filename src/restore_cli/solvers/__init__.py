"""Solvers: one paper per file over a shared loop (``base.py``), and DiffStateGrad (``projection.py``)."""

from .base import Result, Solver, StepInfo
from .daps import DAPS
from .dps import DPS
from .pigdm import PiGDM
from .projection import DiffStateGrad
from .resample import ReSample
from .restarts import run_with_restarts

SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (DPS, PiGDM, DAPS, ReSample)}

__all__ = ["Solver", "Result", "StepInfo", "DPS", "PiGDM", "DAPS", "ReSample", "DiffStateGrad", "SOLVERS", "run_with_restarts"]
