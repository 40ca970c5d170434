from typing import ClassVar

import numpy as np
import optimistix as optx
from diffrax import with_stepsize_controller_tols

from .._root_finder import SimplifiedNewton
from .collocation import (
    AbstractCollocationSolver,
    collocation_init_doc,
    CollocationTableau,
)


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
        c=np.array([1.0]), a=np.array([[1.0]]), order=1
    )

    root_finder: optx.AbstractRootFinder = with_stepsize_controller_tols(
        SimplifiedNewton
    )(kappa=None)
    root_find_max_steps: int = 10
    reuse_jacobian: bool = True


BackwardEuler.__init__.__doc__ = collocation_init_doc("BackwardEuler")
