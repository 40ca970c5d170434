from importlib.metadata import version as _version

from ._examples import (
    Example as Example,
    EXAMPLES as EXAMPLES,
    optimiser_from_name as optimiser_from_name,
    RK4 as RK4,
    solver_from_name as solver_from_name,
)
from ._interpolation import (
    LocalPolynomialInterpolation as LocalPolynomialInterpolation,
)
from ._pinet import PiNet as PiNet
from ._polynomial import PolynomialLibrary as PolynomialLibrary
from ._root_finder import SimplifiedNewton as SimplifiedNewton
from ._solver import (
    AbstractCollocationSolver as AbstractCollocationSolver,
    BackwardEuler as BackwardEuler,
    LowPrecisionWarning as LowPrecisionWarning,
    RadauIIA3 as RadauIIA3,
    RadauIIA5 as RadauIIA5,
    Trapezoid as Trapezoid,
)
from ._symbolic import (
    coefficients as coefficients,
    equations_table as equations_table,
    prune as prune,
    round_coefficients as round_coefficients,
    to_jax as to_jax,
    to_sympy as to_sympy,
)
from ._train import (
    fit as fit,
    FitResult as FitResult,
    interval_predictions as interval_predictions,
    NeuralVectorField as NeuralVectorField,
)


__version__ = _version("diffrax_implicit_node")
