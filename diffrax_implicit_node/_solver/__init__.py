from .adaptive_radau import AdaptiveRadau as AdaptiveRadau
from .backward_euler import BackwardEuler as BackwardEuler
from .collocation import (
    AbstractCollocationSolver as AbstractCollocationSolver,
    CollocationTableau as CollocationTableau,
    LowPrecisionWarning as LowPrecisionWarning,
)
from .lobatto_iiic4 import LobattoIIIC4 as LobattoIIIC4
from .radau_iia3 import RadauIIA3 as RadauIIA3
from .radau_iia5 import RadauIIA5 as RadauIIA5
from .radau_iia9 import RadauIIA9 as RadauIIA9
from .radau_iia13 import RadauIIA13 as RadauIIA13
from .trapezoid import Trapezoid as Trapezoid
