from typing import ClassVar

import optimistix as optx
from diffrax import with_stepsize_controller_tols

from .._root_finder import SimplifiedNewton
from .collocation import (
    AbstractCollocationSolver,
    collocation_init_doc,
    CollocationTableau,
)
from .radau_iia import radau_iia_coefficients


_C, _A = radau_iia_coefficients(5)


class RadauIIA9(AbstractCollocationSolver):
    r"""Radau IIA method of order 9.

    A-, B- and L-stable, stiffly accurate, 9th order. Uses 5 implicit stages, solved per
    Newton iteration as one real and two complex `n × n` linear systems (the
    W-transformation), with at most one Jacobian of `f` per step. The error estimate is
    the stiffly filtered embedded estimate of Hairer & Wanner, of order 5 (error order
    6), filtered with the real eigenvalue of `A⁻¹`. Dense output is the collocation
    polynomial of degree 5.

    For very tight tolerances (`rtol` around `1e-10` and below) on smooth stiff
    problems, where its larger steps outweigh the cost of 5 stages per step.

    The Radau IIA methods were introduced by Ehle; this is the order-9 member of
    Hairer & Wanner's variable-order code RADAU, on the machinery of
    [`diffrax_implicit_node.RadauIIA5`][]. The coefficients are computed at import,
    in 50-digit arithmetic.

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
        @article{hairer1999stiff,
            title={Stiff Differential Equations Solved by {R}adau Methods},
            author={Hairer, Ernst and Wanner, Gerhard},
            journal={Journal of Computational and Applied Mathematics},
            volume={111},
            number={1--2},
            pages={93--111},
            year={1999}
        }
        ```
    """

    tableau: ClassVar[CollocationTableau] = CollocationTableau(c=_C, a=_A, order=9)

    root_finder: optx.AbstractRootFinder = with_stepsize_controller_tols(
        SimplifiedNewton
    )(kappa=None)
    root_find_max_steps: int = 10
    reuse_jacobian: bool = True


RadauIIA9.__init__.__doc__ = collocation_init_doc("RadauIIA9")
