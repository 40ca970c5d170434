from collections.abc import Callable
from typing import ClassVar

import diffrax
import numpy as np
from jaxtyping import PyTree


_rk4_tableau = diffrax.ButcherTableau(
    a_lower=(np.array([1 / 2]), np.array([0.0, 1 / 2]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    # RK4 has no embedded method; the estimate is never used with constant steps.
    b_error=np.zeros(4),
    c=np.array([1 / 2, 1 / 2, 1.0]),
)


class RK4(diffrax.AbstractERK):
    r"""The classical explicit Runge--Kutta method of order 4.

    For comparison with the implicit solvers, as in Fronk & Petzold's van der Pol
    study: it has no error estimate, so use it with `diffrax.ConstantStepSize`. On
    stiff problems it is stable only for steps with $h |\lambda| \lesssim 2.79$
    along the negative real axis. `solver_from_name("rk4")` returns one.

    ??? cite "Reference"

        ```bibtex
        @article{kutta1901beitrag,
            title={Beitrag zur n{\"a}herungsweisen Integration totaler
                   Differentialgleichungen},
            author={Kutta, Wilhelm},
            journal={Zeitschrift f{\"u}r Mathematik und Physik},
            volume={46},
            pages={435--453},
            year={1901}
        }
        ```
    """

    tableau: ClassVar[diffrax.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[
        Callable[..., diffrax.ThirdOrderHermitePolynomialInterpolation]
    ] = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms: PyTree) -> int:
        del terms
        return 4
