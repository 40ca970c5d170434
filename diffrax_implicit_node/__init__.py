from importlib.metadata import version as _version

from . import _citation as _citation  # Registers the solvers with `diffrax.citation`.
from ._examples import (
    CoefficientComparison as CoefficientComparison,
    Example as Example,
    EXAMPLES as EXAMPLES,
)
from ._interpolation import (
    LocalPolynomialInterpolation as LocalPolynomialInterpolation,
)
from ._model import NeuralVectorField as NeuralVectorField
from ._names import (
    optimiser_from_name as optimiser_from_name,
    solver_from_name as solver_from_name,
)
from ._pinet import PiNet as PiNet
from ._polynomial import PolynomialLibrary as PolynomialLibrary
from ._rk4 import RK4 as RK4
from ._root_finder import SimplifiedNewton as SimplifiedNewton
from ._solver import (
    AbstractCollocationSolver as AbstractCollocationSolver,
    AdaptiveRadau as AdaptiveRadau,
    BackwardEuler as BackwardEuler,
    CollocationTableau as CollocationTableau,
    LobattoIIIC4 as LobattoIIIC4,
    LowPrecisionWarning as LowPrecisionWarning,
    RadauIIA3 as RadauIIA3,
    RadauIIA5 as RadauIIA5,
    RadauIIA9 as RadauIIA9,
    RadauIIA13 as RadauIIA13,
    Trapezoid as Trapezoid,
)
from ._sparsify import SparseFit as SparseFit, sparsify as sparsify
from ._step_size_controller import PredictiveController as PredictiveController
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
    UnverifiedFitWarning as UnverifiedFitWarning,
)
from ._uncertainty import Uncertainty as Uncertainty
from ._verify import Verification as Verification
from ._windows import interval_predictions as interval_predictions


__version__ = _version("diffrax_implicit_node")
