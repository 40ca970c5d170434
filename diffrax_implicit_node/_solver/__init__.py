from .backward_euler import BackwardEuler as BackwardEuler
from .collocation import (
    AbstractCollocationSolver as AbstractCollocationSolver,
    LowPrecisionWarning as LowPrecisionWarning,
)
from .radau_iia3 import RadauIIA3 as RadauIIA3
from .radau_iia5 import RadauIIA5 as RadauIIA5
from .trapezoid import Trapezoid as Trapezoid
