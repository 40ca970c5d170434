import abc
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from equinox.internal import ω
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar


class AbstractNewtonMatrix(eqx.Module):
    """An (approximate) Jacobian of a root-finding problem, already factorised, that
    [`diffrax_implicit_node.SimplifiedNewton`][] uses in place of computing its own.

    Implicit Runge--Kutta solvers build one of these per step from a single Jacobian of
    the vector field, and pass it as `options=dict(newton_matrix=...)`.
    """

    @abc.abstractmethod
    def solve(self, residual: PyTree[Array]) -> tuple[PyTree[Array], optx.RESULTS]:
        """Returns `(J^{-1} residual, result)`."""


class _LinearisedNewtonMatrix(AbstractNewtonMatrix):
    operator: lx.AbstractLinearOperator
    state: PyTree[Any]
    linear_solver: lx.AbstractLinearSolver

    def solve(self, residual: PyTree[Array]) -> tuple[PyTree[Array], optx.RESULTS]:
        sol = lx.linear_solve(
            self.operator,
            residual,
            self.linear_solver,
            state=self.state,
            throw=False,
        )
        return sol.value, optx.RESULTS.promote(sol.result)


class _NoAux(eqx.Module):
    fn: Callable

    def __call__(self, y, args):
        out, _ = self.fn(y, args)
        return out


class _SimplifiedNewtonState(eqx.Module):
    newton_matrix: AbstractNewtonMatrix
    scale: PyTree[Array]
    round_off: Scalar
    iterate_round_off: Scalar
    diffsize: Scalar
    diffsize_prev: Scalar
    result: optx.RESULTS
    step: Scalar


class SimplifiedNewton(optx.AbstractRootFinder):
    """Simplified Newton iteration with the convergence control of Hairer & Wanner.

    The Jacobian is evaluated and factorised once, at the initial point, and reused by
    every iteration. Rather than waiting for two successive iterates to agree, the
    iteration watches its own contraction rate `θ = ‖Δₖ‖ / ‖Δₖ₋₁‖`: it stops as soon as
    the predicted remaining error `θ / (1 - θ) ‖Δₖ‖` is below `kappa` (measured in units
    of `atol + rtol |y|`), and gives up early as soon as `θ ≥ 1` or the rate predicts
    that `max_steps` iterations will not suffice. A failure is reported through the
    returned `RESULTS`, so that an adaptive step-size controller can reject the step
    and retry with a smaller one.

    Used on its own, it computes and LU-factorises the Jacobian of `fn` at the initial
    point, i.e. it is the chord method. The solvers of this package instead pass the
    Newton matrix they have already factorised (W-transformed), through `options`.

    This solver optionally accepts the following `options`:

    - `newton_matrix`: An (approximate) Jacobian of `fn`, already factorised: an
        `equinox.Module` whose method `solve(residual)` returns `J⁻¹ residual` and an
        `optimistix.RESULTS`. It is used in place of the Jacobian at the initial point.
    - `scale_reference`: A PyTree of arrays like `y`, against whose absolute value
        `rtol` is measured (the solution at the start of the step, for the solvers of
        this package). Defaults to the initial point.
    - `max_steps`: The `max_steps` of the solve, if any. The iteration then gives up as
        soon as its contraction rate predicts that the remaining iterations will not
        reach the tolerance.

    Besides Optimistix's `num_steps` and `max_steps`, the statistics of the solution
    (`optimistix.Solution.stats`) hold `contraction_rate`, the last ratio
    `‖Δₖ‖ / ‖Δₖ₋₁‖` (0 or NaN after fewer than two iterations).

    ??? cite "Reference"

        ```bibtex
        @book{hairer1996solving,
            title={Solving Ordinary Differential Equations II: Stiff and
                   Differential-Algebraic Problems},
            author={Hairer, Ernst and Wanner, Gerhard},
            edition={2},
            year={1996},
            publisher={Springer},
            note={Section IV.8}
        }
        ```
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.rms_norm
    kappa: float | None = 1e-2
    linear_solver: lx.AbstractLinearSolver = lx.LU()

    def init(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _SimplifiedNewtonState:
        del f_struct, aux_struct
        try:
            newton_matrix = options["newton_matrix"]
        except KeyError:
            operator = lx.linearise(
                lx.JacobianLinearOperator(_NoAux(fn), y, args, tags=tags)
            )
            linear_state = lax.stop_gradient(self.linear_solver.init(operator, {}))
            newton_matrix = _LinearisedNewtonMatrix(
                operator, linear_state, self.linear_solver
            )
        reference = options.get("scale_reference", y)
        with jax.numpy_dtype_promotion("standard"):
            scale = (self.atol + self.rtol * ω(reference).call(jnp.abs)).ω
        # Real, also for a complex `y`: sizes of increments.
        dtype = jnp.finfo(jnp.result_type(*jtu.tree_leaves(y))).dtype
        round_off = self._round_off(reference, scale, dtype)
        return _SimplifiedNewtonState(
            newton_matrix=newton_matrix,
            scale=lax.stop_gradient(scale),
            round_off=lax.stop_gradient(round_off),
            iterate_round_off=jnp.array(0, dtype=dtype),
            diffsize=jnp.array(jnp.inf, dtype=dtype),
            diffsize_prev=jnp.array(jnp.inf, dtype=dtype),
            result=optx.RESULTS.successful,
            step=jnp.array(0),
        )

    def step(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _SimplifiedNewtonState,
        tags: frozenset[object],
    ) -> tuple[PyTree[Array], _SimplifiedNewtonState, Any]:
        del options, tags
        residual, aux = fn(y, args)
        diff, result = state.newton_matrix.solve(residual)
        new_y = (y**ω - diff**ω).ω
        with jax.numpy_dtype_promotion("standard"):
            diffsize = self.norm((diff**ω / state.scale**ω).ω)
        new_state = _SimplifiedNewtonState(
            newton_matrix=state.newton_matrix,
            scale=state.scale,
            round_off=state.round_off,
            iterate_round_off=self._round_off(new_y, state.scale, state.diffsize.dtype),
            diffsize=jnp.asarray(diffsize, dtype=state.diffsize.dtype),
            diffsize_prev=state.diffsize,
            result=result,
            step=state.step + 1,
        )
        return new_y, new_state, aux

    def terminate(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _SimplifiedNewtonState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, tags
        max_steps = options.get("max_steps")
        kappa = self._kappa(state.diffsize.dtype)
        # The contraction rate needs two increments; until then only an exact solve
        # (e.g. a linear problem, or a perfect initial guess) may stop the iteration.
        have_rate = state.step >= 2
        rate = state.diffsize / state.diffsize_prev
        exact = state.diffsize <= jnp.maximum(state.round_off, state.iterate_round_off)
        converged = (
            have_rate & (rate < 1) & (rate / (1 - rate) * state.diffsize < kappa)
        )
        diverged = have_rate & jnp.invert(exact) & ~(rate < 1)
        if max_steps is not None:
            # Predicted error after the iterations that remain: give up early if even
            # these will not reach the tolerance.
            remaining = max_steps - state.step
            hopeless = have_rate & (
                rate**remaining / (1 - rate) * state.diffsize > kappa
            )
            diverged = diverged | (hopeless & jnp.invert(converged | exact))
        not_finite = jnp.invert(jnp.isfinite(state.diffsize)) & (state.step >= 1)
        failed = diverged | not_finite
        linear_solve_failed = state.result != optx.RESULTS.successful
        result = optx.RESULTS.where(
            linear_solve_failed,
            state.result,
            optx.RESULTS.where(
                failed, optx.RESULTS.nonlinear_divergence, optx.RESULTS.successful
            ),
        )
        terminate = (state.step >= 1) & (
            exact | converged | failed | linear_solve_failed
        )
        return terminate, result

    def _round_off(self, y: PyTree[Array], scale: PyTree[Array], dtype) -> Scalar:
        # Increments this small are round-off in `y` (the reference, or the iterate,
        # which may be far larger: the stages of a step from zero): the iteration
        # cannot improve on them, and their ratios say nothing about convergence.
        with jax.numpy_dtype_promotion("standard"):
            size = self.norm((ω(y).call(jnp.abs) / scale**ω).ω)
        return lax.stop_gradient(jnp.asarray(100 * jnp.finfo(dtype).eps * size, dtype))

    def _kappa(self, dtype) -> Scalar:
        if self.kappa is not None:
            return jnp.asarray(self.kappa, dtype=dtype)
        # The rule of RADAU5 and SciPy's `Radau`: a step's error estimate does not see
        # the Newton error, so it must shrink with the tolerance, or it would dominate
        # the global error at moderate tolerances.
        rtol = jnp.asarray(self.rtol, dtype=dtype)
        return jnp.maximum(
            10 * jnp.finfo(dtype).eps / rtol, jnp.minimum(0.03, jnp.sqrt(rtol))
        )

    def postprocess(
        self,
        fn: Callable,
        y: PyTree[Array],
        aux: Any,
        args: PyTree,
        options: dict[str, Any],
        state: _SimplifiedNewtonState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree[Array], Any, dict[str, Any]]:
        return y, aux, dict(contraction_rate=state.diffsize / state.diffsize_prev)


def newton_matrix_worth_keeping(solution: optx.Solution) -> Bool[Array, ""]:
    """Whether a [`diffrax_implicit_node.SimplifiedNewton`][] solve converged so fast
    that the next, similar solve should reuse its Newton matrix: successfully, and in
    at most two iterations or with a contraction rate of at most `10⁻³` (the rule of
    SciPy's `Radau`; Hairer & Wanner's RADAU5 uses the rate alone).
    """
    fast = (solution.stats["num_steps"] <= 2) | (
        solution.stats["contraction_rate"] <= 1e-3
    )
    return (solution.result == optx.RESULTS.successful) & fast


SimplifiedNewton.__init__.__doc__ = """**Arguments:**

- `rtol`: Relative tolerance, against `options["scale_reference"]` if given (the
    solution at the start of the step, for the solvers of this package) and against the
    initial point otherwise.
- `atol`: Absolute tolerance.
- `norm`: The norm in which increments are measured, e.g. `optimistix.rms_norm`.
- `kappa`: The iteration stops once its predicted remaining error is below `kappa`
    times the tolerance. Hairer & Wanner recommend values between `1e-2` and `1e-1`
    for a fixed `kappa`. `None` ties it to `rtol`, as RADAU5 and SciPy's `Radau` do:
    `max(10 ε / rtol, min(0.03, √rtol))`. The solvers' default root finder, whose
    tolerances are those of the adaptive step-size controller, uses `None`: a step's
    error estimate does not see the Newton error, which with a fixed `kappa` would
    dominate the global error at moderate tolerances.
- `linear_solver`: The Lineax solver used to factorise the Jacobian when no Newton
    matrix is passed in `options`.
"""


class NewtonConvergence(NamedTuple):
    """How a [`diffrax_implicit_node.SimplifiedNewton`][] solve converged."""

    # Newton iterations taken.
    iterations: Int[Array, ""]
    # The last contraction rate `θ = ‖Δₖ‖ / ‖Δₖ₋₁‖`: 0 where the first iteration was
    # already exact, infinite where the iteration failed.
    rate: Float[Array, ""]


def newton_convergence(solution: optx.Solution) -> NewtonConvergence:
    """The iteration count and last contraction rate of a
    [`diffrax_implicit_node.SimplifiedNewton`][] solve."""
    rate = solution.stats["contraction_rate"]
    succeeded = (solution.result == optx.RESULTS.successful) & jnp.isfinite(rate)
    return NewtonConvergence(
        iterations=jnp.asarray(solution.stats["num_steps"]),
        rate=jnp.where(succeeded, rate, jnp.inf),
    )
