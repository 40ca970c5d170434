"""Stage 2 of learning: the windows between consecutive observations, each an initial
value problem, solved all at once; and the residuals of their predicted ends."""

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from ._data import Observations
from ._model import NeuralVectorField
from ._polynomial import PolynomialLibrary
from ._sensitivities import (
    generic_parameter_jacobian,
    interval_sensitivities,
    library_parameter_jacobian,
    ParameterJacobian,
    supports_sensitivities,
)
from ._solver import AbstractCollocationSolver


class Windows(eqx.Module):
    """One initial value problem per pair of consecutive observations: from `y0` at
    `t0` to `t1`, where `y1` was observed, in `steps` equal solver steps.

    Every field has a leading window axis of length m, so that the windows can be
    split, padded or sharded along it: `weight` multiplies a window's residuals
    (1 for a real window, 0 for padding, whose solve may then fail harmlessly).
    """

    t0: Float[Array, " m"]
    t1: Float[Array, " m"]
    y0: Float[Array, "m n"]
    y1: Float[Array, "m n"]
    steps: Int[Array, " m"]
    weight: Float[Array, " m"]

    @property
    def max_steps(self) -> int:
        """The most steps of any window: the static length of the solver loop."""
        return int(jnp.max(self.steps))


def windows_from(
    observations: Observations, steps: int | Int[ArrayLike, " m"]
) -> Windows:
    """The windows of every trajectory, trajectory by trajectory, each in `steps`
    steps (one count for all, or one per window)."""
    ts, ys = observations.ts, observations.ys
    size = ys.shape[-1]
    t0 = jnp.asarray(ts[:, :-1].ravel())
    return Windows(
        t0=t0,
        t1=jnp.asarray(ts[:, 1:].ravel()),
        y0=jnp.asarray(ys[:, :-1].reshape(-1, size)),
        y1=jnp.asarray(ys[:, 1:].reshape(-1, size)),
        steps=jnp.broadcast_to(jnp.asarray(steps), t0.shape),
        weight=jnp.ones(t0.shape, dtype=t0.dtype),
    )


def solve_windows(
    vector_field: PyTree,
    t0: Float[Array, " m"],
    t1: Float[Array, " m"],
    y0: Float[Array, "m n"],
    steps: Int[Array, " m"],
    *,
    solver: diffrax.AbstractSolver,
    max_steps: int,
    args: PyTree,
) -> tuple[Float[Array, "m n"], Bool[Array, " m"]]:
    """Integrates each window in its own number of equal steps (at most `max_steps`,
    a static bound). Returns the end states and whether each solve succeeded."""
    if max_steps == 1 and isinstance(solver, AbstractCollocationSolver):
        # A single step has no earlier Jacobian to reuse: leave out the path that
        # would (it costs compilation time and memory, not accuracy).
        solver = eqx.tree_at(lambda s: s.reuse_jacobian, solver, False)

    def solve(t0, t1, y0, steps):
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            solver,
            t0,
            t1,
            (t1 - t0) / steps.astype(t0.dtype),
            y0,
            args=args,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.ConstantStepSize(),
            # A short loop of known length: differentiating it directly stores each
            # step's intermediates instead of recomputing the step in the backward
            # pass, as checkpointing would (about a third of the gradient's cost).
            adjoint=diffrax.DirectAdjoint(),
            max_steps=max_steps,
            # A failed solve is reported, not raised: training decides what to do.
            throw=False,
        )
        assert solution.ys is not None
        return solution.ys[0], solution.result == diffrax.RESULTS.successful

    return jax.vmap(solve)(t0, t1, y0, steps)


def interval_predictions(
    vector_field: PyTree,
    t0: Float[ArrayLike, " m"],
    t1: Float[ArrayLike, " m"],
    y0: Float[ArrayLike, "m n"],
    *,
    solver: diffrax.AbstractSolver,
    steps_per_interval: int = 1,
    args: PyTree = None,
) -> tuple[Float[Array, "m n"], Bool[Array, " m"]]:
    """Integrates $y' = f(t, y, \\mathrm{args})$ over many intervals at once, each in
    a fixed number of constant steps: the forward pass of
    [`diffrax_implicit_node.fit`][].

    **Arguments:**

    - `vector_field`: The vector field `f(t, y, args)`.
    - `t0`, `t1`: The start and end of each interval, arrays of shape `(m,)`.
    - `y0`: The state at the start of each interval, an array of shape `(m, n)`.
    - `solver`: The Diffrax solver. An implicit solver with `ConstantStepSize` needs
        the tolerances of its root finder, e.g.
        `RadauIIA5(root_finder=SimplifiedNewton(rtol=1e-8, atol=1e-8))`.
    - `steps_per_interval`: The number of equal steps per interval.
    - `args`: Passed to the vector field.

    **Returns:**

    `(y1, succeeded)`: the state at the end of each interval, of shape `(m, n)`, and
    whether each solve succeeded (an implicit solver's Newton iteration may fail to
    converge), of shape `(m,)`.
    """
    t0 = jnp.asarray(t0)
    return solve_windows(
        vector_field,
        t0,
        jnp.asarray(t1),
        jnp.asarray(y0),
        jnp.full(t0.shape, steps_per_interval),
        solver=solver,
        max_steps=steps_per_interval,
        args=args,
    )


class Residuals(eqx.Module):
    """The scaled residuals of the predicted ends of windows, as one flat vector: the
    function that training minimises the sum of squares of."""

    frozen: PyTree
    windows: Windows
    scale: Float[Array, " n"]
    solver: diffrax.AbstractSolver
    max_steps: int = eqx.field(static=True)
    args: PyTree

    def with_steps(self, steps: Int[Array, " m"]) -> "Residuals":
        """The same residuals, each window solved in its number of `steps`."""
        windows = eqx.tree_at(lambda w: w.steps, self.windows, steps)
        return dataclasses.replace(self, windows=windows, max_steps=int(jnp.max(steps)))

    def predictions(
        self, trainable: PyTree, windows: Windows | None = None
    ) -> tuple[Float[Array, "m n"], Bool[Array, " m"]]:
        """The predicted end of each window and whether its solve succeeded."""
        windows = self.windows if windows is None else windows
        return solve_windows(
            eqx.combine(trainable, self.frozen),
            windows.t0,
            windows.t1,
            windows.y0,
            windows.steps,
            solver=self.solver,
            max_steps=self.max_steps,
            args=self.args,
        )

    def _scaled(
        self,
        predictions: Float[Array, "m n"],
        succeeded: Bool[Array, " m"],
        windows: Windows,
    ) -> Float[Array, " residuals"]:
        # One residual per component of each window.
        weight = windows.weight[:, None]
        residuals = ((predictions - windows.y1) / self.scale[None, :] * weight).ravel()
        # The end state of a failed solve is meaningless: count it as infinitely far
        # off, which stops a first-order optimiser and makes a trust region shrink.
        return jnp.where(jnp.all(succeeded | (windows.weight == 0)), residuals, jnp.inf)

    def __call__(
        self, trainable: PyTree, indices: Int[Array, " b"] | None = None
    ) -> Float[Array, " residuals"]:
        """The residuals of all windows, or of those of `indices`."""
        windows = self.windows
        if indices is not None:
            windows = jax.tree.map(lambda x: x[indices], windows)
        predictions, succeeded = self.predictions(trainable, windows)
        return self._scaled(predictions, succeeded, windows)

    def _parameter_jacobian(self, trainable: PyTree) -> ParameterJacobian:
        field = eqx.combine(trainable, self.frozen)
        if (
            isinstance(field, NeuralVectorField)
            and isinstance(field.learned, PolynomialLibrary)
            and len(leaves := jax.tree.leaves(trainable)) == 1
            and leaves[0] is trainable.learned.coefficients
        ):
            return library_parameter_jacobian(field.learned)
        flat, unflatten = jax.flatten_util.ravel_pytree(trainable)
        return generic_parameter_jacobian(
            lambda p: eqx.combine(unflatten(p), self.frozen), flat, self.args
        )

    def value_and_jacobian(
        self, trainable: PyTree
    ) -> tuple[Float[Array, " residuals"], Float[Array, "residuals p"]]:
        """The residuals of all windows and their Jacobian with respect to the
        trainable parameters, flattened as `jax.flatten_util.ravel_pytree` does.

        With this package's collocation solvers, by forward sensitivities through
        each implicit step (`_sensitivities`: one LU factorisation per step serves
        every parameter); with other solvers, by one forward-mode derivative per
        parameter through the solver.
        """
        flat, unflatten = jax.flatten_util.ravel_pytree(trainable)
        if not supports_sensitivities(self.solver):

            def value_and_value(flat):
                # The residuals once, as the output to differentiate and as aux.
                value = self(unflatten(flat))
                return value, value

            jacobian, value = jax.jacfwd(value_and_value, has_aux=True)(flat)
            return value, jacobian
        assert isinstance(self.solver, AbstractCollocationSolver)
        windows = self.windows
        sensitivities = interval_sensitivities(
            eqx.combine(trainable, self.frozen),
            self._parameter_jacobian(trainable),
            flat.shape[0],
            windows.t0,
            windows.t1,
            windows.y0,
            windows.steps,
            solver=self.solver,
            max_steps=self.max_steps,
            args=self.args,
        )
        value = self._scaled(sensitivities.y1, sensitivities.succeeded, windows)
        row_scale = windows.weight[:, None] / self.scale[None, :]
        jacobian = sensitivities.jacobian * row_scale[:, :, None]
        return value, jacobian.reshape(value.shape[0], flat.shape[0])
