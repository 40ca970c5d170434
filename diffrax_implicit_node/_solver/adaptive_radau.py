from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from diffrax import with_stepsize_controller_tols
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from .._custom_types import RealScalarLike
from .._interpolation import LocalPolynomialInterpolation
from .._root_finder import newton_convergence, NewtonConvergence, SimplifiedNewton
from .collocation import _CollocationState, AbstractCollocationSolver
from .radau_iia5 import RadauIIA5
from .radau_iia9 import RadauIIA9
from .radau_iia13 import RadauIIA13


class _AdaptiveRadauState(eqx.Module):
    """What an accepted step hands to the next one."""

    # One collocation state per method, each with the collocation polynomial of the
    # last step (whichever method took it), zero-padded to the most stages; only the
    # method that took the last step may keep its Jacobian (and what it factorised).
    collocation: tuple[_CollocationState, ...]
    # The method for the next step, as an index into the allowed methods.
    method: Int[Array, ""]
    # The contraction rate of Newton's method, smoothed over steps.
    rate: Float[Array, ""]
    # Accepted steps in a row with `method`.
    steps_with_method: Int[Array, ""]


class AdaptiveRadau(
    diffrax.AbstractImplicitSolver[_AdaptiveRadauState], diffrax.AbstractAdaptiveSolver
):
    r"""Radau IIA of variable order: 5, 9 or 13 (3, 5 or 7 stages), chosen as it goes.

    Each step is one step of [`diffrax_implicit_node.RadauIIA5`][],
    [`diffrax_implicit_node.RadauIIA9`][] or [`diffrax_implicit_node.RadauIIA13`][],
    whose Newton iteration starts from the last step's collocation polynomial, whatever
    its order; a change of order costs one fresh Jacobian. Higher orders take far
    larger steps at tight tolerances on smooth solutions, but each step solves more
    stages, and their Newton iteration converges more slowly when the step is limited
    by the stiffness rather than by accuracy. The choice follows the contraction rate
    `θ = ‖Δₖ‖ / ‖Δₖ₋₁‖` of the simplified Newton iteration, as in Hairer & Wanner's
    variable-order RADAU:

    - `θ̄`, the rate smoothed over steps, is `max(θ, θ̄_prev / 2)`: it follows a rise at
        once and a fall at half speed.
    - The order rises by one level (5 → 9 → 13) after an accepted step when
        `θ̄ ≤ raise_rate` (default `0.002`: Newton's method converges in one or two
        iterations), the step size is steady (within a factor
        `steady_step_ratio` of the previous step's), and the order has not changed
        for `steps_before_raise` (default 10) steps.
    - It falls by one level when `θ̄ ≥ lower_rate` (default `0.8`), or after a step
        that took more than `lower_iterations` Newton iterations.

    Diffrax discards the state of a rejected step, so a step whose Newton iteration
    fails is retried with a smaller step at the same order; the order falls only once a
    step converges, slowly. Julia's `AdaptiveRadau` (OrdinaryDiffEqFIRK) counts Newton
    iterations instead (smoothed; up below 2.6, down above 8).

    **Error control.** The step-size controller reads the solver's error order once,
    before the solve; this solver reports that of its lowest allowed order, `q₀`
    (4 for order 5). A step of error order `q` (6 for order 9, 8 for order 13) returns
    its error estimate rescaled so that the controller sees `r^(q₀/q)` in place of its
    scaled error `r = norm(err / (atol + rtol max(|y0|, |y1|)))`: it accepts the same
    steps (`r ≤ 1` exactly when `r^(q₀/q) ≤ 1`), and its step-size factor
    `(1/r^(q₀/q))^(β/q₀) = (1/r)^(β/q)` is the one it would use for a solver of error
    order `q`. Computing `r` needs the controller's `rtol`, `atol` and `norm`, which
    the default root finder takes from it (`diffrax.with_stepsize_controller_tols`).

    **Batches.** Under `jax.vmap`, every element of a batch takes its steps with the
    same method, so that the choice remains a real branch rather than running all three
    methods: the lowest order any unfinished element asks for. The order rises only
    when all unfinished elements would raise it, and falls when any would lower it.

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

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., LocalPolynomialInterpolation]] = (
        LocalPolynomialInterpolation
    )
    methods: ClassVar[tuple[type[AbstractCollocationSolver], ...]] = (
        RadauIIA5,
        RadauIIA9,
        RadauIIA13,
    )

    root_finder: optx.AbstractRootFinder = with_stepsize_controller_tols(
        SimplifiedNewton
    )(kappa=None)
    root_find_max_steps: int = 10
    reuse_jacobian: bool = True
    min_order: int = 5
    max_order: int = 13
    raise_rate: float = 0.002
    lower_rate: float = 0.8
    lower_iterations: int = 8
    steady_step_ratio: float = 1.2
    steps_before_raise: int = 10

    def __check_init__(self):
        orders = [method.tableau.order for method in self.methods]
        if self.min_order not in orders or self.max_order not in orders:
            raise ValueError(
                f"`min_order` and `max_order` must be among {orders}, not "
                f"{self.min_order} and {self.max_order}."
            )
        if self.min_order > self.max_order:
            raise ValueError("`min_order` must not exceed `max_order`.")
        if not isinstance(self.root_finder, SimplifiedNewton):
            raise ValueError(
                "AdaptiveRadau chooses its order from the convergence of "
                "`SimplifiedNewton`; `root_finder` must be one."
            )
        if not 0 <= self.raise_rate < self.lower_rate:
            raise ValueError("Need `0 <= raise_rate < lower_rate`.")
        if not self.steady_step_ratio >= 1:
            raise ValueError("`steady_step_ratio` must be at least 1.")

    def _allowed_methods(self) -> tuple[AbstractCollocationSolver, ...]:
        return tuple(
            method(
                root_finder=self.root_finder,
                root_find_max_steps=self.root_find_max_steps,
                reuse_jacobian=self.reuse_jacobian,
            )
            for method in self.methods
            if self.min_order <= method.tableau.order <= self.max_order
        )

    def order(self, terms: PyTree[diffrax.AbstractTerm]) -> int:
        del terms
        return self.min_order

    def error_order(self, terms: PyTree[diffrax.AbstractTerm]) -> int:
        del terms
        return self._allowed_methods()[0].tableau.error_order

    def init(
        self,
        terms: diffrax.AbstractTerm,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: PyTree[Array],
        args: PyTree,
    ) -> _AdaptiveRadauState:
        methods = self._allowed_methods()
        stages = self._most_stages()
        # Only the method of the first step prepares it (factorises its Newton
        # matrices): the others' first steps would be independent batched LAPACK
        # calls, which can hang XLA:CPU (see `_LUFactorisation`), and wasted work.
        first, *others = methods
        collocation = tuple(
            _with_padded_polynomial(state, stages)
            for state in (
                first.init(terms, t0, t1, y0, args),
                *(method._unprepared_state(t0, t1, y0) for method in others),
            )
        )
        return _AdaptiveRadauState(
            collocation=collocation,
            method=jnp.array(0),
            # Real, also for complex states.
            rate=jnp.zeros(
                (), dtype=jnp.finfo(collocation[0].dense_coeffs.dtype).dtype
            ),
            steps_with_method=jnp.array(0),
        )

    def _most_stages(self) -> int:
        return max(len(method.tableau.c) for method in self._allowed_methods())

    def step(
        self,
        terms: diffrax.AbstractTerm,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: PyTree[Array],
        args: PyTree,
        solver_state: _AdaptiveRadauState,
        made_jump: Bool[ArrayLike, ""],
    ) -> tuple[
        PyTree[Array],
        PyTree[Array],
        dict[str, PyTree[Array]],
        _AdaptiveRadauState,
        Any,
    ]:
        methods = self._allowed_methods()
        stages = self._most_stages()
        with jax.numpy_dtype_promotion("standard"):
            finished = jnp.asarray(t1 - t0) == 0
        # A batch steps with one method, the lowest any unfinished element asks for
        # (finished elements still step, with zero size, under `vmap`).
        method = -eqxi.unvmap_max(
            jnp.where(finished, -(len(methods) - 1), -solver_state.method)
        )

        def branch(index: int):
            def run():
                y1, error, dense_info, state, result, solution = methods[
                    index
                ].step_and_stage_solution(
                    terms, t0, t1, y0, args, solver_state.collocation[index], made_jump
                )
                dense_info = dict(
                    y0=dense_info["y0"],
                    coeffs=jtu.tree_map(
                        lambda c: _pad_stages(c, stages), dense_info["coeffs"]
                    ),
                )
                state = _with_padded_polynomial(state, stages)
                # The other methods get this step's size and polynomial, for their
                # starting guess, but not its Jacobian: should they step next, they
                # take a fresh one.
                collocation = tuple(
                    state
                    if other == index
                    else eqx.tree_at(
                        lambda s: (s.previous_dt, s.dense_coeffs, s.jacobian_current),
                        solver_state.collocation[other],
                        (state.previous_dt, state.dense_coeffs, jnp.array(False)),
                    )
                    for other in range(len(methods))
                )
                convergence = newton_convergence(solution)
                return y1, error, dense_info, collocation, result, convergence

            return run

        y1, error, dense_info, collocation, result, convergence = lax.switch(
            method, [branch(index) for index in range(len(methods))]
        )
        error_orders = [solver.tableau.error_order for solver in methods]
        exponent = jnp.asarray([error_orders[0] / q for q in error_orders])[method]
        error = self._error_for_controller(y0, y1, error, exponent)
        next_method, rate, steps_with_method = self._next_method(
            solver_state,
            method,
            len(methods),
            collocation[0].previous_dt,
            convergence,
            finished,
        )
        new_state = _AdaptiveRadauState(
            collocation=collocation,
            method=next_method,
            rate=rate,
            steps_with_method=steps_with_method,
        )
        return y1, error, dense_info, new_state, result

    def _error_for_controller(
        self,
        y0: PyTree[Array],
        y1: PyTree[Array],
        error: PyTree[Array],
        exponent: Float[Array, ""],
    ) -> PyTree[Array]:
        """Rescales `error` so that the controller's scaled error `r` becomes
        `r ** exponent` (see the class docstring)."""
        root_finder = self.root_finder
        assert isinstance(root_finder, SimplifiedNewton)

        def scaled(y0, y1, error):
            # As the controller does, should the step have produced NaN.
            y1 = jnp.where(jnp.isnan(y1).any(), y0, y1)
            with jax.numpy_dtype_promotion("standard"):
                scale = root_finder.atol + root_finder.rtol * jnp.maximum(
                    jnp.abs(y0), jnp.abs(y1)
                )
                return error / scale

        ratio = root_finder.norm(jtu.tree_map(scaled, y0, y1, error))
        usable = (ratio > 0) & jnp.isfinite(ratio)
        safe_ratio = jnp.where(usable, ratio, 1)
        with jax.numpy_dtype_promotion("standard"):
            factor = lax.stop_gradient(
                jnp.where(usable, safe_ratio ** (exponent - 1), 1)
            )
            return jtu.tree_map(lambda e: (e * factor).astype(e.dtype), error)

    def _next_method(
        self,
        state: _AdaptiveRadauState,
        method: Int[Array, ""],
        num_methods: int,
        dt: Float[Array, ""],
        convergence: NewtonConvergence,
        finished: Bool[Array, ""],
    ) -> tuple[Int[Array, ""], Float[Array, ""], Int[Array, ""]]:
        """The method for the step after this one, the smoothed contraction rate and
        the count of steps in a row with the method."""
        dtype = state.rate.dtype
        rate = jnp.minimum(
            10, jnp.maximum(convergence.rate.astype(dtype), state.rate / 2)
        ).astype(dtype)
        steps = jnp.where(method == state.method, state.steps_with_method, 0) + 1
        previous_dt = state.collocation[0].previous_dt
        safe_previous_dt = jnp.where(previous_dt != 0, previous_dt, 1)
        step_ratio = dt / safe_previous_dt
        steady = (
            (previous_dt != 0)
            & (step_ratio <= self.steady_step_ratio)
            & (step_ratio * self.steady_step_ratio >= 1)
        )
        raise_order = (
            (steps >= self.steps_before_raise) & (rate <= self.raise_rate) & steady
        )
        lower_order = (rate >= self.lower_rate) | (
            convergence.iterations > self.lower_iterations
        )
        # Shared by a batch, so that it keeps stepping with one method.
        raise_order = eqxi.unvmap_all(raise_order | finished) & (
            method < num_methods - 1
        )
        lower_order = eqxi.unvmap_any(lower_order & jnp.invert(finished)) & (method > 0)
        next_method = jnp.where(
            lower_order, method - 1, jnp.where(raise_order, method + 1, method)
        )
        steps = jnp.where(next_method == method, steps, 0)
        return next_method, rate, steps

    def func(
        self,
        terms: diffrax.AbstractTerm,
        t0: RealScalarLike,
        y0: PyTree[Array],
        args: PyTree,
    ) -> PyTree[Array]:
        return terms.vf(t0, y0, args)


def _with_padded_polynomial(state: _CollocationState, stages: int) -> _CollocationState:
    return eqx.tree_at(
        lambda s: s.dense_coeffs, state, _pad_stages(state.dense_coeffs, stages)
    )


def _pad_stages(coeffs: Array, stages: int) -> Array:
    """Zero-pads the leading (stage) axis of polynomial coefficients to `stages`: the
    higher powers of `θ` then contribute nothing."""
    padding = [(0, stages - coeffs.shape[0])] + [(0, 0)] * (coeffs.ndim - 1)
    return jnp.pad(coeffs, padding)


AdaptiveRadau.__init__.__doc__ = """**Arguments:**

- `root_finder`: A [`diffrax_implicit_node.SimplifiedNewton`][], whose convergence
    steers the order. By default its tolerances are those of the adaptive step-size
    controller (as for the fixed-order solvers), which the error rescaling needs.
- `root_find_max_steps`, `reuse_jacobian`: As for
    [`diffrax_implicit_node.RadauIIA5`][].
- `min_order`, `max_order`: The orders allowed, among 5, 9 and 13. Equal values give
    the fixed-order method.
- `raise_rate`: The order rises when the smoothed contraction rate is at most this.
- `lower_rate`: The order falls when the smoothed contraction rate is at least this.
- `lower_iterations`: The order falls after a step that took more Newton iterations.
- `steady_step_ratio`: The order rises only when the step size changed by less than
    this factor (up or down) from the previous step.
- `steps_before_raise`: Steps in a row at one order before it may rise.
"""
