from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from diffrax import with_stepsize_controller_tols
from jaxtyping import Array, Inexact

from .._root_finder import SimplifiedNewton
from .collocation import (
    AbstractCollocationSolver,
    AbstractErrorEstimate,
    collocation_init_doc,
    CollocationStep,
    CollocationTableau,
)


class _MidpointDefectEstimate(AbstractErrorEstimate):
    """Simpson's rule on the defect `h f(t, u(t)) - h u'(t)` of the collocation
    polynomial `u` of the trapezoidal rule, which vanishes at both ends:
    `(2/3) (h f(t½, u(t½)) - h u'(t½))`, of order 3 (error order 3)."""

    def error_order(self, c: np.ndarray, a: np.ndarray) -> int:
        if not np.array_equal(c, [0.0, 1.0]):
            raise ValueError("The midpoint defect estimate is the trapezoidal rule's.")
        return 3

    def __call__(
        self, tableau: CollocationTableau, step: CollocationStep
    ) -> Inexact[Array, " n"]:
        with jax.numpy_dtype_promotion("standard"):
            midpoint_time = step.t0 + 0.5 * (step.t1 - step.t0)
            midpoint_value = (
                step.y0 + 0.5 * step.dense_coeffs[0] + 0.25 * (step.dense_coeffs[1])
            )
        # u' is linear, so at the midpoint it is the mean of the end derivatives.
        defect = step.hf(midpoint_time, midpoint_value) - jnp.mean(
            step.stage_derivatives, axis=0
        )
        return step.newton_matrix.solve_error_filter(2 / 3 * defect)


class Trapezoid(AbstractCollocationSolver):
    r"""Trapezoidal rule (Crank--Nicolson), the two-stage Lobatto IIIA method.

    A-stable but not L-stable, 2nd order. One explicit and one implicit stage. Very
    stiff components are not damped: they flip sign every step (its stability function
    tends to -1), so prefer [`diffrax_implicit_node.RadauIIA3`][] when transients are
    fast compared with the step.

    The error estimate integrates the defect of the collocation polynomial `u` at the
    midpoint, `(2/3) (h f(t½, u(t½)) - h u'(t½))` (Simpson's rule, the defect vanishing
    at both ends), filtered through `(I - hJ/2)⁻¹`; it is of order 3 (error order 3) at
    the cost of one more evaluation of `f`. Dense output is the collocation polynomial,
    the quadratic with `u(t0) = y0`, `u'(t0) = f(t0, y0)` and `u'(t1) = f(t1, y1)`.

    ??? cite "Reference"

        ```bibtex
        @book{hairer1993solving,
            title={Solving Ordinary Differential Equations I: Nonstiff Problems},
            author={Hairer, Ernst and N{\o}rsett, Syvert P. and Wanner, Gerhard},
            edition={2},
            year={1993},
            publisher={Springer}
        }
        ```
    """

    # The error filter `I - hJ/2` reuses the factorisation of the Newton matrix.
    tableau: ClassVar[CollocationTableau] = CollocationTableau(
        c=np.array([0.0, 1.0]),
        a=np.array([[0.0, 0.0], [0.5, 0.5]]),
        order=2,
        error_estimate=_MidpointDefectEstimate(),
    )

    root_finder: optx.AbstractRootFinder = with_stepsize_controller_tols(
        SimplifiedNewton
    )(kappa=None)
    root_find_max_steps: int = 10
    reuse_jacobian: bool = True


Trapezoid.__init__.__doc__ = collocation_init_doc("Trapezoid")
