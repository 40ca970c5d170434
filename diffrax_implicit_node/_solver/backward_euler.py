from typing import ClassVar

import numpy as np
import optimistix as optx
from diffrax import with_stepsize_controller_tols
from jaxtyping import Array, Inexact

from .._root_finder import SimplifiedNewton
from .collocation import (
    AbstractCollocationSolver,
    collocation_init_doc,
    CollocationStep,
    CollocationTableau,
    embedded_error_estimate,
    embedded_error_weights,
)


_C = np.array([1.0])
_A = np.array([[1.0]])
_ERROR_FILTER_SHIFT = 1.0
_ERROR_WEIGHTS = embedded_error_weights(_C, _A, 1 / _ERROR_FILTER_SHIFT)


class BackwardEuler(AbstractCollocationSolver):
    r"""Backward (implicit) Euler method.

    A-, B- and L-stable, 1st order. Uses 1 implicit stage: it is the one-stage Radau IIA
    method. The error estimate for adaptive stepping is the stiffly filtered
    `(I - hJ)⁻¹ h (f(t0, y0) - f(t1, y1))`, a 2nd-order estimate. Dense output is
    linear, which is its collocation polynomial.

    Unlike `diffrax.ImplicitEuler`, the error estimate is filtered through
    `(I - hJ)⁻¹`, so that stiff components in equilibrium do not force small steps.

    ??? cite "Reference"

        ```bibtex
        @book{hairer1996solving,
            title={Solving Ordinary Differential Equations II: Stiff and
                   Differential-Algebraic Problems},
            author={Hairer, Ernst and Wanner, Gerhard},
            edition={2},
            year={1996},
            publisher={Springer}
        }
        ```
    """

    tableau: ClassVar[CollocationTableau] = CollocationTableau(
        c=_C, a=_A, order=1, error_order=2, error_filter_shift=_ERROR_FILTER_SHIFT
    )

    root_finder: optx.AbstractRootFinder = with_stepsize_controller_tols(
        SimplifiedNewton
    )(kappa=None)
    root_find_max_steps: int = 10
    reuse_jacobian: bool = True

    def _estimate_error(self, step: CollocationStep) -> Inexact[Array, " n"]:
        return embedded_error_estimate(step, _ERROR_WEIGHTS)


BackwardEuler.__init__.__doc__ = collocation_init_doc("BackwardEuler")
