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


_C = np.array([1 / 3, 1])
_A = np.array([[5 / 12, -1 / 12], [3 / 4, 1 / 4]])
# A⁻¹ has only the complex pair 2 ± i√2, so the error filter `I - γ₀ hJ` needs a
# factorisation of its own; γ₀ = 1/|2 ± i√2| keeps it as well conditioned as the stages.
_ERROR_FILTER_SHIFT = np.sqrt(6)
_ERROR_WEIGHTS = embedded_error_weights(_C, _A, 1 / _ERROR_FILTER_SHIFT)


class RadauIIA3(AbstractCollocationSolver):
    r"""Radau IIA method of order 3.

    A-, B- and L-stable, stiffly accurate, 3rd order. Uses 2 implicit stages, solved
    per Newton iteration as one complex `n × n` linear system (the W-transformation),
    with at most one Jacobian of `f` per step. The error estimate is a stiffly filtered
    embedded estimate in the manner of Hairer & Wanner, of order 2 (error order 3).
    Dense output is the collocation polynomial of degree 2.

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
        c=_C, a=_A, order=3, error_order=3, error_filter_shift=_ERROR_FILTER_SHIFT
    )

    root_finder: optx.AbstractRootFinder = with_stepsize_controller_tols(
        SimplifiedNewton
    )(kappa=None)
    root_find_max_steps: int = 10
    reuse_jacobian: bool = True

    def _estimate_error(self, step: CollocationStep) -> Inexact[Array, " n"]:
        return embedded_error_estimate(step, _ERROR_WEIGHTS)


RadauIIA3.__init__.__doc__ = collocation_init_doc("RadauIIA3")
