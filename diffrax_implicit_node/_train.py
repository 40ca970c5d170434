import json
import math
import os
import pathlib
import warnings
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import optimistix as optx
import tqdm
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree, Scalar

from ._polynomial import PolynomialLibrary
from ._sensitivities import (
    generic_parameter_jacobian,
    interval_sensitivities,
    library_parameter_jacobian,
    ParameterJacobian,
    supports_sensitivities,
)
from ._solver import AbstractCollocationSolver


_CHECKPOINT_FORMAT = 1
_NON_FINITE_ADVICE = (
    "The result holds the last parameters with a finite loss. An explicit solver on "
    "stiff data does this; try an implicit solver, a smaller learning rate or more "
    "`steps_per_interval`"
)
_NON_FINITE_LOSS = "the loss is not finite (or a solve failed). " + _NON_FINITE_ADVICE
_NON_FINITE_GRADIENT = "the gradient is not finite. " + _NON_FINITE_ADVICE
_NO_TAGS: frozenset[object] = frozenset()


class NeuralVectorField(eqx.Module):
    r"""The vector field $f(t, y, \mathrm{args}) = g(y) + k(t, y, \mathrm{args})$ of a
    neural ODE: a learned, autonomous part $g$ (such as a
    [`diffrax_implicit_node.PiNet`][]) plus an optional known part $k$, the physics
    that you already know.

    Pass it to [`diffrax_implicit_node.fit`][]; only the parameters of $g$ are trained
    (a known part may hold arrays too, and they stay as they are), and afterwards
    `to_sympy(trained.learned)` reads off the learned part.

    !!! Example

        ```python
        def forcing(t, y, args):
            return -2000.0 * jnp.exp(-t) * jnp.ones_like(y)

        field = NeuralVectorField(PiNet(1, 1, degree=1, width=4, key=key), forcing)
        ```
    """

    learned: Callable[[Array], Array]
    known: Callable[[Scalar, Array, PyTree], Array] | None = None

    def __call__(self, t: Scalar, y: Array, args: PyTree) -> Array:
        """**Arguments:**

        - `t`: The time.
        - `y`: The state, an array of shape `(n,)`.
        - `args`: Passed on to the known part.

        **Returns:**

        $g(y) + k(t, y, \\mathrm{args})$, an array of shape `(n,)`.
        """
        out = self.learned(y)
        if self.known is not None:
            out = out + self.known(t, y, args)
        return out


class FitResult(eqx.Module):
    """What [`diffrax_implicit_node.fit`][] returns.

    **Attributes:**

    - `model`: The trained vector field, of the same structure as the one passed in.
        When training stopped on a non-finite loss, this holds the last parameters
        whose loss was finite; when interrupted, those with the lowest loss so far.
    - `losses`: The loss of each completed epoch, a NumPy array; across a resumed
        checkpoint it continues the history saved there.
    - `opt_state`: The final state of the optimiser (of the Optimistix solver, for a
        least-squares one).
    - `stopped_early`: Whether training stopped before reaching the requested number
        of epochs: on a non-finite loss or gradient, a failure of the least-squares
        solver, or when interrupted (Ctrl-C). Not when a least-squares solver
        converges: then `losses` is just shorter than the number of epochs.
    - `message`: Why training stopped early; empty otherwise.
    """

    model: PyTree
    losses: np.ndarray
    opt_state: PyTree
    stopped_early: bool
    message: str


def _as_trajectories(ts: ArrayLike, ys: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Checks the data and returns it as `(ts, ys)` of shapes `(B, T)` and
    `(B, T, n)`. Raises `ValueError` naming the problem."""
    ts = np.asarray(ts)
    ys = np.asarray(ys)
    for name, array in (("ts", ts), ("ys", ys)):
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ValueError(
                f"`{name}` must be a real numeric array, got {array.dtype}."
            )
        bad = np.argwhere(~np.isfinite(array))
        if len(bad):
            raise ValueError(
                f"`{name}` contains non-finite values (NaN or infinity), the first at "
                f"index {tuple(int(i) for i in bad[0])}."
            )
    if ys.ndim not in (2, 3):
        raise ValueError(
            f"`ys` must have shape (T, n) or (B, T, n), got shape {ys.shape}."
        )
    batched = ys.ndim == 3
    num_times = ys.shape[-2]
    if ts.shape not in ((num_times,), ys.shape[:-1]):
        raise ValueError(
            f"`ts` of shape {ts.shape} does not match `ys` of shape {ys.shape}: "
            f"expected shape ({num_times},)"
            + (f" or {ys.shape[:-1]}." if batched else ".")
        )
    if num_times < 2:
        raise ValueError(
            f"Each trajectory needs at least 2 observations, got {num_times}."
        )
    if not batched:
        ys = ys[None]
    ts = np.broadcast_to(ts, ys.shape[:-1])
    steps = np.diff(ts, axis=1)
    bad = np.argwhere(steps <= 0)
    if len(bad):
        trajectory, time = (int(i) for i in bad[0])
        kind = "repeated" if steps[trajectory, time] == 0 else "decreasing"
        where = f"trajectory {trajectory}, " if batched else ""
        raise ValueError(
            f"`ts` must be strictly increasing, but has {kind} times at {where}"
            f"indices {time} and {time + 1} ({ts[trajectory, time]!r}, "
            f"{ts[trajectory, time + 1]!r})."
        )
    return ts, ys


class _Intervals(eqx.Module):
    """One initial value problem per pair of consecutive observations."""

    t0: Float[Array, " m"]
    t1: Float[Array, " m"]
    y0: Float[Array, "m n"]
    y1: Float[Array, "m n"]


def _intervals(ts: np.ndarray, ys: np.ndarray) -> _Intervals:
    size = ys.shape[-1]
    return _Intervals(
        t0=jnp.asarray(ts[:, :-1].ravel()),
        t1=jnp.asarray(ts[:, 1:].ravel()),
        y0=jnp.asarray(ys[:, :-1].reshape(-1, size)),
        y1=jnp.asarray(ys[:, 1:].reshape(-1, size)),
    )


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

    if steps_per_interval == 1 and isinstance(solver, AbstractCollocationSolver):
        # A single step has no earlier Jacobian to reuse: leave out the path that
        # would (it costs compilation time and memory, not accuracy).
        solver = eqx.tree_at(lambda s: s.reuse_jacobian, solver, False)

    def solve(t0, t1, y0):
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            solver,
            t0,
            t1,
            (t1 - t0) / steps_per_interval,
            y0,
            args=args,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.ConstantStepSize(),
            # A short loop of known length: differentiating it directly stores each
            # step's intermediates instead of recomputing the step in the backward
            # pass, as checkpointing would (about a third of the gradient's cost).
            adjoint=diffrax.DirectAdjoint(),
            max_steps=steps_per_interval,
            # A failed solve is reported, not raised: training decides what to do.
            throw=False,
        )
        assert solution.ys is not None
        return solution.ys[0], solution.result == diffrax.RESULTS.successful

    return jax.vmap(solve)(jnp.asarray(t0), jnp.asarray(t1), jnp.asarray(y0))


class _Residuals(eqx.Module):
    """The scaled residuals of the predicted ends of intervals, as one flat vector."""

    frozen: PyTree
    intervals: _Intervals
    scale: Float[Array, " n"]
    solver: diffrax.AbstractSolver
    steps_per_interval: int = eqx.field(static=True)
    args: PyTree

    def __call__(
        self, trainable: PyTree, indices: Int[Array, " b"] | None = None
    ) -> Float[Array, " b*n"]:
        intervals = self.intervals
        if indices is not None:
            intervals = jax.tree.map(lambda x: x[indices], intervals)
        predictions, succeeded = interval_predictions(
            eqx.combine(trainable, self.frozen),
            intervals.t0,
            intervals.t1,
            intervals.y0,
            solver=self.solver,
            steps_per_interval=self.steps_per_interval,
            args=self.args,
        )
        residuals = ((predictions - intervals.y1) / self.scale).ravel()
        # The end state of a failed solve is meaningless: count it as infinitely far
        # off, which stops a first-order optimiser and makes a trust region shrink.
        return jnp.where(jnp.all(succeeded), residuals, jnp.inf)


@eqx.filter_jit
def _train_step(
    trainable: PyTree,
    opt_state: PyTree,
    optimiser: optax.GradientTransformation,
    residuals: _Residuals,
    indices: Int[Array, " b"],
) -> tuple[PyTree, PyTree, Scalar, Bool[Array, ""]]:
    def loss_fn(trainable):
        return jnp.sum(residuals(trainable, indices) ** 2)

    loss, grads = eqx.filter_value_and_grad(loss_fn)(trainable)
    grads_finite = jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    if isinstance(optimiser, optax.GradientTransformationExtraArgs):
        # Line-search optimisers such as `optax.lbfgs` need the loss function.
        updates, opt_state = optimiser.update(
            grads, opt_state, trainable, value=loss, grad=grads, value_fn=loss_fn
        )
    else:
        updates, opt_state = optimiser.update(grads, opt_state, trainable)
    trainable = eqx.apply_updates(trainable, updates)
    return trainable, opt_state, loss, grads_finite


def _parameter_jacobian(
    residuals: _Residuals, flat: Float[Array, " p"], unflatten: Callable
) -> ParameterJacobian:
    trainable = unflatten(flat)
    field = eqx.combine(trainable, residuals.frozen)
    if (
        isinstance(field, NeuralVectorField)
        and isinstance(field.learned, PolynomialLibrary)
        and len(leaves := jax.tree.leaves(trainable)) == 1
        and leaves[0] is trainable.learned.coefficients
    ):
        return library_parameter_jacobian(field.learned)
    return generic_parameter_jacobian(
        lambda p: eqx.combine(unflatten(p), residuals.frozen), flat, residuals.args
    )


def _residual_jacobian(
    residuals: _Residuals, flat: Float[Array, " p"], unflatten: Callable
) -> tuple[Float[Array, "r p"], Float[Array, " r"]]:
    """`(jacobian, residuals)` from forward sensitivities through each implicit step
    (`_sensitivities`), with one LU factorisation per step for all parameters."""
    intervals = residuals.intervals
    solver = residuals.solver
    assert isinstance(solver, AbstractCollocationSolver)
    sensitivities = interval_sensitivities(
        eqx.combine(unflatten(flat), residuals.frozen),
        _parameter_jacobian(residuals, flat, unflatten),
        flat.shape[0],
        intervals.t0,
        intervals.t1,
        intervals.y0,
        jnp.full(intervals.t0.shape, residuals.steps_per_interval),
        solver=solver,
        max_steps=residuals.steps_per_interval,
        args=residuals.args,
    )
    value = ((sensitivities.y1 - intervals.y1) / residuals.scale).ravel()
    value = jnp.where(jnp.all(sensitivities.succeeded), value, jnp.inf)
    jacobian = sensitivities.jacobian / residuals.scale[None, :, None]
    return jacobian.reshape(value.shape[0], -1), value


def _least_squares_problem(
    residuals: _Residuals, trainable: PyTree
) -> tuple[Float[Array, " p"], Callable[[Array, None], tuple], Callable]:
    """The residuals as a function `fn(flat, None) -> (residuals, None)` of the
    flattened parameters, for an Optimistix least-squares solver; returns
    `(flat, fn, unflatten)`.

    Its forward-mode derivative materialises the Jacobian (one JVP per parameter):
    Optimistix linearises `fn` and keeps the linearisation in its state, which for
    the solves of thousands of intervals would otherwise hold every intermediate
    value of every step (gigabytes, in memory and in each checkpoint), instead of
    a residuals-by-parameters matrix.
    """
    flat, unflatten = jax.flatten_util.ravel_pytree(trainable)

    def plain(flat):
        return residuals(unflatten(flat))

    def value_and_value(flat):
        # The residuals once, as the output to differentiate and as the aux value.
        value = plain(flat)
        return value, value

    @jax.custom_jvp
    def with_jacobian(flat):
        return plain(flat)

    @with_jacobian.defjvp
    def _(primals, tangents):
        (flat,), (tangent,) = primals, tangents
        if supports_sensitivities(residuals.solver):
            jacobian, value = _residual_jacobian(residuals, flat, unflatten)
        else:
            jacobian, value = jax.jacfwd(value_and_value, has_aux=True)(flat)
        return value, jacobian @ tangent

    return flat, lambda flat, _: (with_jacobian(flat), None), unflatten


@eqx.filter_jit
def _least_squares_init(
    trainable: PyTree, least_squares: optx.AbstractGaussNewton, residuals: _Residuals
) -> PyTree:
    flat, fn, _ = _least_squares_problem(residuals, trainable)
    residuals_struct = jax.eval_shape(lambda: fn(flat, None)[0])
    return least_squares.init(fn, flat, None, {}, residuals_struct, None, _NO_TAGS)


@eqx.filter_jit
def _least_squares_step(
    trainable: PyTree,
    state: PyTree,
    least_squares: optx.AbstractGaussNewton,
    residuals: _Residuals,
) -> tuple[PyTree, PyTree, Scalar, Bool[Array, ""], optx.RESULTS]:
    # One step of Optimistix's own loop (`optx.least_squares`), so that `fit` can
    # report, checkpoint and stop between steps.
    flat, fn, unflatten = _least_squares_problem(residuals, trainable)
    flat, state, _ = least_squares.step(fn, flat, None, {}, state, _NO_TAGS)
    converged, result = least_squares.terminate(fn, flat, None, {}, state, _NO_TAGS)
    # The residuals at the accepted point: a trust region never accepts a worse one.
    loss = jnp.sum(state.f_info.residual**2)
    return unflatten(flat), state, loss, converged, result


def _run_epoch(
    step: Callable[[PyTree, PyTree, Int[Array, " b"]], tuple],
    trainable: PyTree,
    opt_state: PyTree,
    last_good: PyTree,
    batches: Int[Array, "batches b"],
) -> tuple[PyTree, PyTree, PyTree, float, str]:
    """One optimiser step per batch.

    Returns `(trainable, opt_state, last_good, loss, failure)`: the state after the
    epoch, the last parameters whose loss was finite, the summed loss of the batches,
    and why the epoch stopped early (empty if it did not). After a failure,
    `trainable` is `last_good` and `opt_state` is that before the failed step.
    """
    epoch_loss = 0.0
    for indices in batches:
        try:
            new_trainable, new_opt_state, loss, grads_finite = step(
                trainable, opt_state, indices
            )
            loss = float(loss)
        except eqx.EquinoxRuntimeError:
            # Some solvers check for NaN themselves, even with `throw=False`.
            return last_good, opt_state, last_good, epoch_loss, _NON_FINITE_LOSS
        if not np.isfinite(loss):
            return last_good, opt_state, last_good, epoch_loss, _NON_FINITE_LOSS
        last_good = trainable
        if not grads_finite:
            return last_good, opt_state, last_good, epoch_loss, _NON_FINITE_GRADIENT
        trainable, opt_state = new_trainable, new_opt_state
        epoch_loss += loss
    return trainable, opt_state, last_good, epoch_loss, ""


def _run_least_squares_step(
    least_squares: optx.AbstractGaussNewton,
    residuals: _Residuals,
    trainable: PyTree,
    state: PyTree,
) -> tuple[PyTree, PyTree, PyTree, float, str, bool]:
    """One step of a least-squares solver, as one epoch: returns `(trainable, state,
    last_good, loss, failure, converged)` like `_run_epoch`, plus whether the solver
    has converged."""
    try:
        new_trainable, new_state, loss, converged, result = _least_squares_step(
            trainable, state, least_squares, residuals
        )
        loss = float(loss)
    except eqx.EquinoxRuntimeError:
        return trainable, state, trainable, math.nan, _NON_FINITE_LOSS, False
    if not np.isfinite(loss):
        # Only the starting point can do this: a trust region rejects such a step.
        return trainable, state, trainable, loss, _NON_FINITE_LOSS, False
    if result != optx.RESULTS.successful:
        failure = f"{least_squares.__class__.__name__} failed: {optx.RESULTS[result]}"
        return trainable, state, trainable, loss, failure, False
    return new_trainable, new_state, new_trainable, loss, "", bool(converged)


def _save_checkpoint(
    path: pathlib.Path, trainable: PyTree, opt_state: PyTree, losses: list[float]
) -> None:
    header = dict(format=_CHECKPOINT_FORMAT, epochs=len(losses))
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write((json.dumps(header) + "\n").encode())
        eqx.tree_serialise_leaves(f, (trainable, opt_state, np.asarray(losses)))
    # Atomic: an interrupted save leaves the previous checkpoint intact.
    os.replace(partial, path)


def _load_checkpoint(
    path: pathlib.Path, trainable: PyTree, opt_state: PyTree
) -> tuple[PyTree, PyTree, list[float]]:
    with open(path, "rb") as f:
        try:
            header = json.loads(f.readline())
            if header.get("format") != _CHECKPOINT_FORMAT:
                raise ValueError
            like = (trainable, opt_state, np.zeros(header["epochs"]))
            trainable, opt_state, losses = eqx.tree_deserialise_leaves(f, like)
        except Exception as e:
            raise ValueError(
                f"Cannot resume from checkpoint {str(path)!r}: it is not a checkpoint "
                "of this model and optimiser (delete it to start afresh)."
            ) from e
    return trainable, opt_state, [float(x) for x in losses]


def fit(
    vector_field: PyTree,
    ts: Float[ArrayLike, " T"] | Float[ArrayLike, "B T"],
    ys: Float[ArrayLike, "T n"] | Float[ArrayLike, "B T n"],
    *,
    solver: diffrax.AbstractSolver,
    optimiser: optax.GradientTransformation | optx.AbstractGaussNewton,
    epochs: int,
    steps_per_interval: int = 1,
    batch_size: int | None = None,
    key: PRNGKeyArray | None = None,
    args: PyTree = None,
    scale: Float[ArrayLike, " n"] | None = None,
    filter_spec: PyTree[bool | Callable[[object], bool]] = eqx.is_inexact_array,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool = True,
) -> FitResult:
    r"""Trains a neural ODE on observations by *discretize-then-optimize*.

    Every pair of consecutive observations $(t_k, y_k), (t_{k+1}, y_{k+1})$ of a
    trajectory is an initial value problem from $y_k$, integrated over
    $[t_k, t_{k+1}]$ by `solver` in `steps_per_interval` equal steps, giving
    $\hat y_{k+1}$. All intervals of all trajectories are solved at once (`jax.vmap`)
    and the loss is the sum of squared residuals

    $$\mathcal{L} = \sum_{b, k, i}
    \left(\frac{\hat y_{b, k+1, i} - y_{b, k+1, i}}{s_i}\right)^2,$$

    with $s$ = `scale` (all ones by default: the plain sum of squared residuals of
    Fronk & Petzold; pass, e.g., the typical size of each component when they differ
    by orders of magnitude). Gradients are taken through the discretisation, and
    through each implicit step by the implicit function theorem.

    An epoch is one pass over all intervals: one optimiser step on all of them, or,
    with `batch_size`, one step per minibatch of a random permutation (the last,
    incomplete minibatch is left out, a different one each epoch). The training step
    is compiled once and reused for every epoch (and across calls with the same
    arguments).

    The optimiser is either an Optax transformation (first order: Adam, L-BFGS, ...)
    or an Optimistix least-squares solver of the Gauss--Newton family, such as
    `optimistix.LevenbergMarquardt(rtol=1e-10, atol=1e-12)`. Stiff data usually needs
    the latter: only the short, fast transients determine some combinations of
    coefficients (the stiff ones), so the loss is extremely ill conditioned (for Kaps'
    problem its curvatures differ by about $10^9$) and first-order methods stall in
    its valley, while Levenberg--Marquardt, which uses the Jacobian of the residuals,
    follows it. Then an epoch is one step of the solver (accepted or not), the loss
    history is that of the accepted parameters, and training ends early, without a
    warning, once the solver meets its tolerances. Each step needs the Jacobian of the
    residuals (residuals by parameters, held in memory): right for models of up to a
    few hundred parameters, such as a [`diffrax_implicit_node.PiNet`][] or a
    [`diffrax_implicit_node.PolynomialLibrary`][]. With this package's collocation
    solvers it comes from forward sensitivities through each implicit step (one LU
    factorisation of the exact stage matrix per step serves every parameter); with
    other solvers, from one forward-mode derivative per parameter through the solver.

    If the loss or its gradient becomes non-finite, or a solve fails (the Newton
    iteration of an implicit solver does not converge, which counts as an infinite
    loss), training stops with a warning, and the result holds the last parameters
    whose loss was finite. Explicit solvers on stiff data do this. (A least-squares
    solver instead rejects a trial step whose solves fail and shrinks its trust
    region; only non-finite residuals at the starting parameters stop it.)

    An interruption (`KeyboardInterrupt`, Ctrl-C) also stops training with a warning:
    the result holds the parameters with the lowest loss so far, and the checkpoint,
    if any, is saved at the end of the last completed epoch.

    With `checkpoint`, the parameters, the optimiser state, the epoch and the loss
    history are saved every `checkpoint_every` epochs and at the end (with
    `equinox.tree_serialise_leaves`); if the file already exists, training resumes
    from it and continues exactly, bit for bit, as if it had not been interrupted.
    Pass the same initial `vector_field`, data and options as before.

    ??? cite "Reference"

        ```bibtex
        @article{fronk2024neural,
            title={Neural ODEs for Stiff Systems: Implicit Single-Step Methods},
            author={Fronk, Colby and Petzold, Linda},
            journal={arXiv:2410.05592},
            year={2024}
        }
        ```

    **Arguments:**

    - `vector_field`: The model, any callable PyTree `f(t, y, args)` such as an
        Equinox module, e.g. [`diffrax_implicit_node.NeuralVectorField`][] around a
        [`diffrax_implicit_node.PiNet`][].
    - `ts`: The observation times, of shape `(T,)` (shared by all trajectories) or
        `(B, T)`. Strictly increasing; need not be equally spaced.
    - `ys`: The observations, of shape `(T, n)` (one trajectory) or `(B, T, n)`.
    - `solver`: The Diffrax solver, such as
        `RadauIIA5(root_finder=SimplifiedNewton(rtol=1e-8, atol=1e-8))`. Constant
        steps are used, so an implicit solver's root finder needs its tolerances.
    - `optimiser`: Any Optax transformation, e.g. `optax.adam(1e-3)` (line-search
        methods such as `optax.lbfgs()` are supported: they receive the loss
        function), or an `optimistix.AbstractGaussNewton` least-squares solver, e.g.
        `optimistix.LevenbergMarquardt(rtol=1e-10, atol=1e-12)`.
    - `epochs`: The total number of epochs (including those of a resumed checkpoint).
    - `steps_per_interval`: Solver steps between consecutive observations.
    - `batch_size`: Intervals per optimiser step. Defaults to all of them (the only
        choice with a least-squares solver).
    - `key`: A `jax.random.PRNGKey` for the minibatches; needed with `batch_size`.
    - `args`: Passed to the vector field.
    - `scale`: The per-component scale $s$ of the residuals, shape `(n,)`.
    - `filter_spec`: Which leaves of `vector_field` to train, as for
        `equinox.partition`. Defaults to every floating-point array.
    - `checkpoint`: A file to save to and resume from.
    - `checkpoint_every`: Epochs between checkpoints.
    - `progress`: Whether to show a progress bar with the loss.

    **Returns:**

    A [`diffrax_implicit_node.FitResult`][] with the trained model and the loss
    history.
    """
    ts, ys = _as_trajectories(ts, ys)
    intervals = _intervals(ts, ys)
    num_intervals, size = intervals.y0.shape
    least_squares = isinstance(optimiser, optx.AbstractGaussNewton)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"`epochs` must be a non-negative integer, got {epochs!r}.")
    if (
        isinstance(steps_per_interval, bool)
        or not isinstance(steps_per_interval, int)
        or steps_per_interval < 1
    ):
        raise ValueError(
            f"`steps_per_interval` must be a positive integer, got "
            f"{steps_per_interval!r}."
        )
    if batch_size is None:
        batch_size = num_intervals
    elif least_squares:
        raise ValueError(
            "A least-squares `optimiser` fits all intervals at once: leave out "
            "`batch_size`."
        )
    elif not 1 <= batch_size <= num_intervals:
        raise ValueError(
            f"`batch_size` must be between 1 and the number of intervals, "
            f"{num_intervals}, got {batch_size}."
        )
    elif key is None:
        raise ValueError("Minibatches (`batch_size`) need a `key`.")
    if scale is None:
        scale = jnp.ones(size, dtype=intervals.y0.dtype)
    else:
        scale = jnp.asarray(scale, dtype=intervals.y0.dtype)
        if scale.shape != (size,) or not bool(jnp.all(scale > 0)):
            raise ValueError(
                f"`scale` must be {size} positive numbers, one per component."
            )

    trainable, frozen = eqx.partition(vector_field, filter_spec)
    residuals = _Residuals(
        frozen, intervals, scale, solver, steps_per_interval, args=args
    )
    if isinstance(optimiser, optx.AbstractGaussNewton):
        opt_state = _least_squares_init(trainable, optimiser, residuals)
    else:
        # Some optimisers (`optax.lbfgs`) start with weakly typed scalars that the
        # first update makes strongly typed: fix the types now, or the second epoch
        # recompiles.
        opt_state = jax.tree.map(
            lambda x: jnp.asarray(x, dtype=x.dtype) if eqx.is_array(x) else x,
            optimiser.init(trainable),
        )
    losses: list[float] = []
    checkpoint_path = None if checkpoint is None else pathlib.Path(checkpoint)
    if checkpoint_path is not None and checkpoint_path.exists():
        trainable, opt_state, losses = _load_checkpoint(
            checkpoint_path, trainable, opt_state
        )

    num_batches = num_intervals // batch_size

    def run_epoch(epoch, trainable, opt_state, last_good):
        if isinstance(optimiser, optx.AbstractGaussNewton):
            return _run_least_squares_step(optimiser, residuals, trainable, opt_state)
        transformation = optimiser  # An Optax one.
        if batch_size == num_intervals:
            batches = jnp.arange(num_intervals)[None]
        else:
            assert key is not None
            # A key per epoch: resuming from a checkpoint needs no key state.
            order = jr.permutation(jr.fold_in(key, epoch), num_intervals)
            batches = order[: num_batches * batch_size].reshape(num_batches, -1)

        def step(trainable, opt_state, indices):
            return _train_step(trainable, opt_state, transformation, residuals, indices)

        return (
            *_run_epoch(step, trainable, opt_state, last_good, batches),
            False,
        )

    last_good = trainable
    best_loss, best = math.inf, trainable
    message = ""
    with tqdm.tqdm(
        total=epochs, initial=min(len(losses), epochs), disable=not progress
    ) as bar:
        epoch_start = trainable, opt_state
        try:
            for epoch in range(len(losses), epochs):
                epoch_start = trainable, opt_state
                trainable, opt_state, last_good, epoch_loss, failure, converged = (
                    run_epoch(epoch, trainable, opt_state, last_good)
                )
                if failure:
                    message = f"Training stopped in epoch {epoch}: {failure}."
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
                    break
                losses.append(epoch_loss)
                # A full batch's loss is that of the parameters before its step, a
                # least-squares step's that of the parameters after it; a minibatch
                # epoch's loss belongs to no single set of parameters: keep those at
                # the end of the best epoch.
                if epoch_loss < best_loss:
                    best_loss = epoch_loss
                    before_step = not least_squares and batch_size == num_intervals
                    best = epoch_start[0] if before_step else trainable
                bar.set_postfix(loss=f"{epoch_loss:.4e}")
                bar.update()
                if checkpoint_path is not None and (
                    len(losses) % checkpoint_every == 0
                    or len(losses) == epochs
                    or converged
                ):
                    _save_checkpoint(checkpoint_path, trainable, opt_state, losses)
                if converged:
                    break
        except KeyboardInterrupt:
            # Drop the interrupted epoch, so that resuming repeats it exactly.
            trainable, opt_state = epoch_start
            if checkpoint_path is not None:
                _save_checkpoint(checkpoint_path, trainable, opt_state, losses)
            message = (
                f"Training interrupted in epoch {len(losses)}. The result holds the "
                "parameters with the lowest loss so far"
                + (
                    "; the checkpoint holds the state to resume from."
                    if checkpoint_path is not None
                    else "."
                )
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if best_loss < math.inf:
                trainable = best
    return FitResult(
        model=eqx.combine(trainable, frozen),
        losses=np.asarray(losses),
        opt_state=opt_state,
        stopped_early=bool(message),
        message=message,
    )
