from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, Float, PyTree

from ._custom_types import RealScalarLike


class _PredictiveState(eqx.Module):
    """What the controller remembers between steps."""

    # The last accepted step's size (0 before the first) and its scaled error,
    # floored at 1e-2 as in RADAU5, so that a tiny error cannot blow up the ratio.
    accepted_dt: Float[Array, ""]
    accepted_error: Float[Array, ""]
    # Whether the last attempted step was rejected: the step after a rejection may
    # not grow.
    rejected: Bool[Array, ""]


class PredictiveController(
    diffrax.AbstractAdaptiveStepSizeController[_PredictiveState, RealScalarLike | None]
):
    """The predictive step-size controller of Gustafsson, as in Hairer & Wanner's
    RADAU5 and SciPy's `Radau`.

    With `err` the scaled error of the step just taken (size `h`, order of the error
    estimate `k`) and `err_old`, `h_old` those of the previous accepted step, an
    accepted step proposes

    `h_new = h · min(1, (h / h_old) · (err_old / err)^(1/k)) · safety · err^(-1/k)`,

    clipped to `[factormin, factormax] · h`: the standard (integral) controller, made
    more cautious where the error grew faster than the step size. After a rejection
    the next step may not grow. A rejected step retries with
    `h · clip(safety · err^(-1/k), factormin, safety)`.

    A proposed factor in `[1, hold_max]` keeps `h` unchanged, as RADAU5 does: an
    implicit solver can then reuse its factorised Newton matrix (the solvers of this
    package do), which pays more than a slightly longer step.

    Works with any adaptive Diffrax solver; its `rtol`, `atol` and `norm` are also the
    Newton tolerances of implicit solvers that take theirs from the controller (the
    default). For `jump_ts` and `step_ts`, wrap it in a
    `diffrax.ClipStepSizeController`.

    ??? cite "References"

        ```bibtex
        @article{gustafsson1994control,
            title={Control-theoretic techniques for stepsize selection in implicit
                   {R}unge-{K}utta methods},
            author={Gustafsson, Kjell},
            journal={ACM Transactions on Mathematical Software},
            volume={20},
            number={4},
            pages={496--517},
            year={1994}
        }

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

    rtol: RealScalarLike
    atol: RealScalarLike
    norm: Callable[[PyTree], RealScalarLike] = optx.rms_norm
    dtmin: RealScalarLike | None = None
    dtmax: RealScalarLike | None = None
    safety: RealScalarLike = 0.9
    factormin: RealScalarLike = 0.2
    factormax: RealScalarLike = 8.0
    hold_max: RealScalarLike = 1.2

    def __check_init__(self):
        for name in ("safety", "factormin", "factormax", "hold_max"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and value <= 0:
                raise ValueError(f"`{name}` must be positive, got {value}.")
        if isinstance(self.factormax, (int, float)) and self.factormax < 1:
            raise ValueError(f"`factormax` must be at least 1, got {self.factormax}.")

    def wrap(self, direction):
        del direction
        return self

    def init(
        self,
        terms: PyTree[diffrax.AbstractTerm],
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: PyTree[Array],
        dt0: RealScalarLike | None,
        args: PyTree,
        func: Callable[[PyTree[diffrax.AbstractTerm], RealScalarLike, Any, Any], Any],
        error_order: RealScalarLike | None,
    ) -> tuple[RealScalarLike, _PredictiveState]:
        del t1
        if dt0 is None:
            if error_order is None:
                raise ValueError(
                    "`PredictiveController` needs the order of the solver's error "
                    "estimate to choose the first step; pass `dt0` instead."
                )
            dt0 = lax.stop_gradient(
                self._initial_step(terms, t0, y0, args, func, error_order)
            )
        time_dtype = jnp.result_type(t0)
        dt0 = jnp.asarray(dt0, dtype=time_dtype)
        if self.dtmax is not None:
            dt0 = jnp.minimum(dt0, self.dtmax)
        if self.dtmin is not None:
            dt0 = jnp.maximum(dt0, self.dtmin)
        error_dtype = jnp.result_type(*jtu.tree_leaves(y0), float)
        state = _PredictiveState(
            accepted_dt=jnp.zeros((), time_dtype),
            accepted_error=jnp.ones((), error_dtype),
            rejected=jnp.array(False),
        )
        return t0 + dt0, state

    def _initial_step(self, terms, t0, y0, args, func, error_order) -> Array:
        """Hairer, Nørsett & Wanner's starting step size (I, II.4): an explicit Euler
        step's second derivative estimate, sized for a scaled error of 0.01."""
        scale = jtu.tree_map(lambda y: self.atol + self.rtol * jnp.abs(y), y0)

        def scaled_norm(tree):
            with jax.numpy_dtype_promotion("standard"):
                return self.norm(jtu.tree_map(jnp.divide, tree, scale))

        f0 = func(terms, t0, y0, args)
        d0 = scaled_norm(y0)
        d1 = scaled_norm(f0)
        tiny = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = jnp.where(tiny, 1e-6, 0.01 * d0 / jnp.where(tiny, 1, d1))
        with jax.numpy_dtype_promotion("standard"):
            y1 = jtu.tree_map(lambda y, f: y + h0 * f, y0, f0)
            f1 = func(terms, t0 + h0, y1, args)
        d2 = scaled_norm(jtu.tree_map(jnp.subtract, f1, f0)) / h0
        largest = jnp.maximum(d1, d2)
        h1 = jnp.where(
            largest <= 1e-15,
            jnp.maximum(1e-6, h0 * 1e-3),
            (0.01 / jnp.where(largest <= 1e-15, 1, largest)) ** (1 / error_order),
        )
        return jnp.minimum(100 * h0, h1)

    def adapt_step_size(
        self,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: PyTree[Array],
        y1_candidate: PyTree[Array],
        args: PyTree,
        y_error: PyTree[Array] | None,
        error_order: RealScalarLike,
        controller_state: _PredictiveState,
    ) -> tuple[
        Bool[Array, ""],
        RealScalarLike,
        RealScalarLike,
        bool,
        _PredictiveState,
        diffrax.RESULTS,
    ]:
        del args
        if y_error is None:
            raise RuntimeError(
                "`PredictiveController` needs a solver that estimates its error."
            )
        state = controller_state
        dt = jnp.asarray(t1 - t0, dtype=state.accepted_dt.dtype)
        dtype = state.accepted_error.dtype
        error = lax.stop_gradient(
            jnp.asarray(self._scaled_error(y0, y1_candidate, y_error), dtype=dtype)
        )
        accept = error <= 1
        # As in `diffrax.PIDController`: the step sizes are not differentiated.
        factor = lax.stop_gradient(
            proposed_factor(
                dt,
                error,
                state,
                1 / jnp.asarray(error_order, dtype=dtype),
                safety=self.safety,
                factormin=self.factormin,
                factormax=self.factormax,
                hold_max=self.hold_max,
            )
        )
        new_dt = dt * eqxi.nondifferentiable(factor)
        if self.dtmax is not None:
            new_dt = jnp.minimum(new_dt, self.dtmax)
        result = diffrax.RESULTS.successful
        if self.dtmin is not None:
            result = diffrax.RESULTS.where(
                new_dt < self.dtmin, diffrax.RESULTS.dt_min_reached, result
            )
        next_t0 = jnp.where(accept, t1, t0)
        new_state = _PredictiveState(
            accepted_dt=jnp.where(accept, dt, state.accepted_dt),
            accepted_error=jnp.where(
                accept, jnp.maximum(error, 1e-2), state.accepted_error
            ),
            rejected=jnp.invert(accept),
        )
        return accept, next_t0, next_t0 + new_dt, False, new_state, result

    def _scaled_error(self, y0, y1_candidate, y_error) -> RealScalarLike:
        def scaled(y0, y1, error):
            # A solver that stepped out of the vector field's domain gives NaNs.
            y1 = jnp.where(jnp.any(jnp.isnan(y1)), y0, y1)
            with jax.numpy_dtype_promotion("standard"):
                return error / (
                    self.atol + jnp.maximum(jnp.abs(y0), jnp.abs(y1)) * self.rtol
                )

        return self.norm(jtu.tree_map(scaled, y0, y1_candidate, y_error))


def proposed_factor(
    dt: Float[Array, ""],
    error: Float[Array, ""],
    state: _PredictiveState,
    exponent: Float[Array, ""],
    *,
    safety: RealScalarLike,
    factormin: RealScalarLike,
    factormax: RealScalarLike,
    hold_max: RealScalarLike,
) -> Float[Array, ""]:
    """The factor by which the next step's size differs from `dt`, whose step had the
    scaled error `error`."""
    # `error` may be 0 (a linear problem solved exactly) or infinite (a failed step):
    # then the factor is the clipped limit of the formula.
    with jax.numpy_dtype_promotion("standard"):
        standard = safety * error ** (-exponent)
        has_history = state.accepted_dt > 0
        ratio = dt / jnp.where(has_history, state.accepted_dt, 1)
        predictive = standard * ratio * (state.accepted_error / error) ** exponent
        accepted_factor = jnp.where(
            has_history, jnp.minimum(standard, predictive), standard
        )
        accepted_factor = jnp.clip(accepted_factor, factormin, factormax)
        accepted_factor = jnp.where(
            state.rejected, jnp.minimum(accepted_factor, 1), accepted_factor
        )
        accepted_factor = jnp.where(
            (accepted_factor >= 1) & (accepted_factor <= hold_max), 1, accepted_factor
        )
        rejected_factor = jnp.clip(standard, factormin, safety)
        factor = jnp.where(error <= 1, accepted_factor, rejected_factor)
    return factor.astype(dt.dtype)


PredictiveController.__init__.__doc__ = """**Arguments:**

- `rtol`: Relative tolerance.
- `atol`: Absolute tolerance.
- `norm`: A function `PyTree -> Scalar`; steps are sized so that
    `norm(error / (atol + rtol · max(|y0|, |y1|)))` is about one.
- `dtmin`: Optional smallest step size: a step that would be smaller ends the solve
    with `diffrax.RESULTS.dt_min_reached`.
- `dtmax`: Optional largest step size: longer steps are clipped to it.
- `safety`: Multiplicative safety factor.
- `factormin`: Smallest factor by which a step may shrink.
- `factormax`: Largest factor by which a step may grow.
- `hold_max`: Proposed factors in `[1, hold_max]` keep the step size unchanged;
    `1` holds only a factor of exactly 1.
"""
