"""The models, solvers and optimisers of the command line and the studies, by name."""

import diffrax
import optax
import optimistix as optx
from jaxtyping import PRNGKeyArray

from ._pinet import PiNet
from ._polynomial import PolynomialLibrary
from ._rk4 import RK4
from ._root_finder import SimplifiedNewton
from ._solver import BackwardEuler, RadauIIA3, RadauIIA5, Trapezoid


SOLVER_NAMES = ("backward-euler", "trapezoid", "radau3", "radau5", "rk4")
_IMPLICIT_SOLVERS = {
    "backward-euler": BackwardEuler,
    "trapezoid": Trapezoid,
    "radau3": RadauIIA3,
    "radau5": RadauIIA5,
}


def solver_from_name(
    name: str, rtol: float = 1e-8, atol: float = 1e-8, root_find_max_steps: int = 50
) -> diffrax.AbstractSolver:
    """A solver for training with constant steps, by name.

    The names are those of the command line's `--solver`. For an implicit solver this
    is, e.g. for `"radau5"`,
    `RadauIIA5(root_finder=SimplifiedNewton(rtol, atol), root_find_max_steps=50)`:
    under constant steps the root finder needs its own tolerances, since there is no
    step-size controller to take them from.

    **Arguments:**

    - `name`: One of `"backward-euler"`, `"trapezoid"`, `"radau3"`, `"radau5"` (the
        implicit solvers [`diffrax_implicit_node.BackwardEuler`][],
        [`diffrax_implicit_node.Trapezoid`][], [`diffrax_implicit_node.RadauIIA3`][]
        and [`diffrax_implicit_node.RadauIIA5`][]) or `"rk4"`
        ([`diffrax_implicit_node.RK4`][], explicit, for comparison).
    - `rtol`, `atol`: The tolerances of the Newton iteration of an implicit solver.
    - `root_find_max_steps`: The most Newton iterations per step. Generous, because
        with constant steps a step cannot be retried with a smaller step size.

    **Returns:**

    The solver, a `diffrax.AbstractSolver`.
    """
    if name == "rk4":
        return RK4()
    try:
        solver_cls = _IMPLICIT_SOLVERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown solver {name!r}; choose one of {', '.join(SOLVER_NAMES)}."
        ) from None
    return solver_cls(
        root_finder=SimplifiedNewton(rtol=rtol, atol=atol),
        root_find_max_steps=root_find_max_steps,
    )


OPTIMISER_NAMES = ("levenberg-marquardt", "lbfgs")


def optimiser_from_name(
    name: str,
) -> optax.GradientTransformation | optx.AbstractGaussNewton:
    """An optimiser for [`diffrax_implicit_node.fit`][], by name.

    The names are those of the command line's `--optimiser`.

    **Arguments:**

    - `name`: `"levenberg-marquardt"` for
        `optimistix.LevenbergMarquardt(rtol=1e-10, atol=1e-12)`, a least-squares
        solver that copes with the ill-conditioned losses of stiff data; or `"lbfgs"`
        for `optax.lbfgs()`, first order with a line search, cheaper per epoch and
        enough when the data pins every coefficient down about equally.

    **Returns:**

    The optimiser, to pass to `fit(..., optimiser=...)`.
    """
    if name == "levenberg-marquardt":
        return optx.LevenbergMarquardt(rtol=1e-10, atol=1e-12)
    if name == "lbfgs":
        return optax.lbfgs()
    raise ValueError(
        f"Unknown optimiser {name!r}; choose one of {', '.join(OPTIMISER_NAMES)}."
    )


MODEL_NAMES = ("pinet", "polynomial")


def learned_from_name(
    name: str, size: int, degree: int, width: int, *, key: PRNGKeyArray
) -> PiNet | PolynomialLibrary:
    """The learned part of a vector field of `size` states, by the name of the
    command line's `--model`: `"pinet"` for a [`diffrax_implicit_node.PiNet`][] of
    `degree` and `width` initialised from `key`, `"polynomial"` for a
    [`diffrax_implicit_node.PolynomialLibrary`][] of `degree` (zero, so `width` and
    `key` are unused)."""
    if name == "pinet":
        return PiNet(size, size, degree, width, key=key)
    if name == "polynomial":
        return PolynomialLibrary(size, degree)
    raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
