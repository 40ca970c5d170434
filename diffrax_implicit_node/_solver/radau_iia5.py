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


_SQRT6 = np.sqrt(6)
_C = np.array([(4 - _SQRT6) / 10, (4 + _SQRT6) / 10, 1])
_A = np.array(
    [
        [(88 - 7 * _SQRT6) / 360, (296 - 169 * _SQRT6) / 1800, (-2 + 3 * _SQRT6) / 225],
        [(296 + 169 * _SQRT6) / 1800, (88 + 7 * _SQRT6) / 360, (-2 - 3 * _SQRT6) / 225],
        [(16 - _SQRT6) / 36, (16 + _SQRT6) / 36, 1 / 9],
    ]
)
# The real eigenvalue of A⁻¹ (Hairer & Wanner's RADAU5): the error filter then reuses
# the factorisation of the real Newton system.
_REAL_EIGENVALUE = 30 / (6 + 81 ** (1 / 3) - 9 ** (1 / 3))
_ERROR_WEIGHTS = embedded_error_weights(_C, _A, 1 / _REAL_EIGENVALUE)


class RadauIIA5(AbstractCollocationSolver):
    r"""Radau IIA method of order 5.

    A-, B- and L-stable, stiffly accurate, 5th order. Uses 3 implicit stages, solved
    per Newton iteration as one real and one complex `n × n` linear system (the
    W-transformation), with at most one Jacobian of `f` per step. The error estimate is
    the stiffly filtered embedded estimate of Hairer & Wanner, of order 4 (error order
    4). Dense output is the collocation polynomial of degree 3.

    This is the method of the RADAU5 code of Hairer & Wanner and of SciPy's `Radau`, and
    the default choice for stiff problems at moderate to tight tolerances.

    ??? cite "References"

        ```bibtex
        @book{hairer1996solving,
            title={Solving Ordinary Differential Equations II: Stiff and
                   Differential-Algebraic Problems},
            author={Hairer, Ernst and Wanner, Gerhard},
            edition={2},
            year={1996},
            publisher={Springer}
        }

        @article{fronk2024neural,
            title={Neural ODEs for Stiff Systems: Implicit Single-Step Methods},
            author={Fronk, Colby and Petzold, Linda},
            journal={arXiv:2410.05592},
            year={2024}
        }
        ```
    """

    tableau: ClassVar[CollocationTableau] = CollocationTableau(
        c=_C, a=_A, order=5, error_order=4, error_filter_shift=_REAL_EIGENVALUE
    )

    root_finder: optx.AbstractRootFinder = with_stepsize_controller_tols(
        SimplifiedNewton
    )(kappa=None)
    root_find_max_steps: int = 10
    reuse_jacobian: bool = True

    def _estimate_error(self, step: CollocationStep) -> Inexact[Array, " n"]:
        return embedded_error_estimate(step, _ERROR_WEIGHTS)


RadauIIA5.__init__.__doc__ = collocation_init_doc("RadauIIA5")
