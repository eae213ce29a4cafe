"""Solvers: one paper per file over a shared loop (``base.py``), and DiffStateGrad (``projection.py``)."""

from .base import Result, Solver, StepInfo
from .baselines import PosteriorMean, PosteriorSample, PseudoInverse
from .daps import DAPS, LatentDAPS
from .ddrm import DDRM
from .dds import DDS
from .diffpir import DiffPIR
from .dps import DPS
from .gml_dps import GMLDPS
from .p2l import P2L
from .pigdm import PiGDM
from .projection import DiffStateGrad
from .psld import PSLD
from .resample import ReSample
from .restarts import run_with_restarts

# one class per paper (latent-daps is DAPS's latent defaults under their own name, as latent-dps is DPS)
SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (DPS, PiGDM, DAPS, GMLDPS, PSLD, ReSample, P2L,
                                                            DDRM, DiffPIR, DDS, PseudoInverse, PosteriorMean,
                                                            PosteriorSample)}

__all__ = ["Solver", "Result", "StepInfo", "DPS", "PiGDM", "DAPS", "LatentDAPS", "GMLDPS", "PSLD", "ReSample", "P2L", "DDRM", "DiffPIR", "DDS", "PseudoInverse", "PosteriorMean", "PosteriorSample", "DiffStateGrad", "SOLVERS", "run_with_restarts"]
