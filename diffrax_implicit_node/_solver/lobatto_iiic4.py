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


class LobattoIIIC4(AbstractCollocationSolver):
    r"""Lobatto IIIC method of order 4.

    A-, B- and L-stable, stiffly accurate, 4th order, with stage order 2. Uses 3
    implicit stages at the nodes `0, 1/2, 1` (the first one implicit too, unlike
    Lobatto IIIA), solved per Newton iteration as one real and one complex `n × n`
    linear system (the W-transformation). The error estimate is the stiffly filtered
    embedded estimate of Hairer & Wanner, of order 3 (error order 4). Lobatto IIIC is
    not a collocation method: dense output is the cubic `u` with `u(t0) = y0` and
    `u'(t0 + cⱼ h) = f(Yⱼ)`, which ends at `y1`.

    Prefer [`diffrax_implicit_node.RadauIIA5`][], of higher order at the same cost;
    this method shows that a new solver is only data, a
    [`diffrax_implicit_node.CollocationTableau`][].

    ??? cite "References"

        ```bibtex
        @article{chipman1971astable,
            title={{A}-Stable {R}unge--{K}utta Processes},
            author={Chipman, F. H.},
            journal={BIT Numerical Mathematics},
            volume={11},
            number={4},
            pages={384--388},
            year={1971}
        }
        ```

        ```bibtex
        @article{axelsson1972note,
            title={A Note on a Class of Strongly {A}-Stable Methods},
            author={Axelsson, Owe},
            journal={BIT Numerical Mathematics},
            volume={12},
            number={1},
            pages={1--4},
            year={1972}
        }
        ```
    """

    tableau: ClassVar[CollocationTableau] = CollocationTableau(
        c=np.array([0.0, 0.5, 1.0]),
        a=np.array(
            [[1 / 6, -1 / 3, 1 / 6], [1 / 6, 5 / 12, -1 / 12], [1 / 6, 2 / 3, 1 / 6]]
        ),
        order=4,
    )

    root_finder: optx.AbstractRootFinder = with_stepsize_controller_tols(
        SimplifiedNewton
    )(kappa=None)
    root_find_max_steps: int = 10
    reuse_jacobian: bool = True


LobattoIIIC4.__init__.__doc__ = collocation_init_doc("LobattoIIIC4")
