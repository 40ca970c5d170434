from importlib.metadata import version as _version

from ._interpolation import (
    LocalPolynomialInterpolation as LocalPolynomialInterpolation,
)
from ._root_finder import SimplifiedNewton as SimplifiedNewton
from ._solver import (
    AbstractCollocationSolver as AbstractCollocationSolver,
    BackwardEuler as BackwardEuler,
    LowPrecisionWarning as LowPrecisionWarning,
    RadauIIA3 as RadauIIA3,
    RadauIIA5 as RadauIIA5,
    Trapezoid as Trapezoid,
)


__version__ = _version("diffrax_implicit_node")
