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


_SQRT6 = np.sqrt(6)
_C = np.array([(4 - _SQRT6) / 10, (4 + _SQRT6) / 10, 1])
_A = np.array(
    [
        [(88 - 7 * _SQRT6) / 360, (296 - 169 * _SQRT6) / 1800, (-2 + 3 * _SQRT6) / 225],
        [(296 + 169 * _SQRT6) / 1800, (88 + 7 * _SQRT6) / 360, (-2 - 3 * _SQRT6) / 225],
        [(16 - _SQRT6) / 36, (16 + _SQRT6) / 36, 1 / 9],
    ]
)


class RadauIIA5(AbstractCollocationSolver):
    r"""Radau IIA method of order 5.

    A-, B- and L-stable, stiffly accurate, 5th order. Uses 3 implicit stages, solved
    per Newton iteration as one real and one complex `n × n` linear system (the
    W-transformation), with at most one Jacobian of `f` per step. The error estimate is
    the stiffly filtered embedded estimate of Hairer & Wanner, of order 3 (error order
    4). Dense output is the collocation polynomial of degree 3.

    This is the method of the RADAU5 code of Hairer & Wanner and of SciPy's `Radau`, and
    the default choice for stiff problems at moderate to tight tolerances. The Radau
    IIA methods were introduced by Ehle; the implementation follows Hairer & Wanner.

    ??? cite "References"

        ```bibtex
        @phdthesis{ehle1969pade,
            title={On {P}ad{\'e} Approximations to the Exponential Function and
                   {A}-Stable Methods for the Numerical Solution of Initial Value
                   Problems},
            author={Ehle, Byron L.},
            school={University of Waterloo},
            year={1969}
        }
        ```

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
        # The error filter uses the real eigenvalue of A⁻¹, as RADAU5 does.
        c=_C,
        a=_A,
        order=5,
    )

    root_finder: optx.AbstractRootFinder = with_stepsize_controller_tols(
        SimplifiedNewton
    )(kappa=None)
    root_find_max_steps: int = 10
    reuse_jacobian: bool = True


RadauIIA5.__init__.__doc__ = collocation_init_doc("RadauIIA5")
