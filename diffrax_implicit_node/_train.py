"""The learning pipeline: observations -> windows -> model -> optimiser -> trained
model. Each stage lives in its own module; `fit` runs them in order."""

import math
import os
import pathlib
import warnings
from collections.abc import Callable
from typing import Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import tqdm
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from ._checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ._data import as_observations
from ._optimise import AbstractOptimisation, optimisation
from ._sharding import data_parallel, DataParallel, Devices
from ._uncertainty import Uncertainty, uncertainty
from ._verify import (
    DATA_RTOL,
    data_scale,
    Verification,
    verify,
    window_errors,
    window_predictions,
)
from ._windows import Residuals, windows_from


# Automatic discretisation doubles a window's steps up to this many, checking them at
# least every so many epochs.
MAX_AUTO_STEPS = 256
AUTO_ROUND_EPOCHS = 50


class UnverifiedFitWarning(RuntimeWarning):
    """Warned by [`diffrax_implicit_node.fit`][] when the trained model does not
    reproduce the data (see [`diffrax_implicit_node.Verification`][])."""


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
    - `verification`: Whether the trained model reproduces the data, with the
        figures: a [`diffrax_implicit_node.Verification`][]. A small final loss is
        not enough: with too few solver steps per gap the discretisation, not the
        equations, can fit the data.
    - `uncertainty`: The standard errors of the learned coefficients (of a PiNet or a
        PolynomialLibrary; else of the trainable parameters) and the directions the
        data do not determine: a [`diffrax_implicit_node.Uncertainty`][].
    - `steps`: The solver steps of each window (gap between observations) in the
        final round of training, a NumPy array of shape `(B, T - 1)`.
    - `devices`: The number of devices trained on.
    """

    model: PyTree
    losses: np.ndarray
    opt_state: PyTree
    stopped_early: bool
    message: str
    verification: Verification
    uncertainty: Uncertainty
    steps: np.ndarray
    devices: int = 1


def fit(
    vector_field: PyTree,
    ts: Float[ArrayLike, " T"] | Float[ArrayLike, "B T"],
    ys: Float[ArrayLike, "T n"] | Float[ArrayLike, "B T n"],
    *,
    solver: diffrax.AbstractSolver,
    optimiser: optax.GradientTransformation | optx.AbstractGaussNewton,
    epochs: int,
    steps_per_interval: int | Literal["auto"] = "auto",
    batch_size: int | None = None,
    key: PRNGKeyArray | None = None,
    args: PyTree = None,
    scale: Float[ArrayLike, " n"] | None = None,
    filter_spec: PyTree[bool | Callable[[object], bool]] = eqx.is_inexact_array,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool = True,
    noise: float | None = None,
    devices: Devices | None = None,
) -> FitResult:
    r"""Trains a neural ODE on observations by *discretize-then-optimize*.

    Every pair of consecutive observations $(t_k, y_k), (t_{k+1}, y_{k+1})$ of a
    trajectory (a *window*) is an initial value problem from $y_k$, integrated over
    $[t_k, t_{k+1}]$ by `solver` in equal steps, giving $\hat y_{k+1}$. All
    windows of all trajectories are solved at once (`jax.vmap`) and the loss is the
    sum of squared residuals

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

    **The discretisation is chosen for you.** With few steps per gap, a fast
    transient inside a gap is not resolved, and training can fit the data with the
    *discretisation's* error instead of the right equations: a tiny loss, wrong
    coefficients. With `steps_per_interval="auto"` (the default), training starts
    with one step per window (more where a window's solve fails with the starting
    parameters: doubled until it succeeds); whenever the optimiser converges, and
    every 50 epochs, every window whose predicted end changes, with twice the steps,
    by more than a tenth of the `noise` (or, if not given, by more than $10^{-8}$),
    relative to each component's largest magnitude, gets twice the steps, and
    training continues from where it was, until the optimiser converges with no
    window needing more (at most 256 steps). Windows differ: typically only the
    first gap of each trajectory, where the transient is, needs many. `epochs`
    bounds all rounds together.

    **Every fit is verified.** After training, the learned equations are integrated
    from each trajectory's first observation over its whole span with a tight
    adaptive `RadauIIA5`, and compared with the data; and the residuals are
    recomputed with twice the steps (the discretisation bias). If the model misses
    the data by more than twice the data's *resolution* (the `noise` given, or the
    root mean square of the residuals, at least $10^{-4}$, all relative to each
    component's largest magnitude) or the bias exceeds a tenth of it, or if, with no
    `noise` given, the residuals exceed 5 % (then the model does not fit the data),
    `fit` warns (`UnverifiedFitWarning`) and `result.verification.verified` is
    `False`. Then the
    standard error of every learned coefficient and the practically unidentifiable
    directions are computed (`result.uncertainty`).

    An interruption (`KeyboardInterrupt`, Ctrl-C) also stops training with a warning:
    the result holds the parameters with the lowest loss so far, and the checkpoint,
    if any, is saved at the end of the last completed epoch.

    With `checkpoint`, the parameters, the optimiser state, the epoch and the loss
    history are saved every `checkpoint_every` epochs and at the end (with
    `equinox.tree_serialise_leaves`); if the file already exists, training resumes
    from it and continues exactly, bit for bit, as if it had not been interrupted.
    Pass the same initial `vector_field`, data and options as before (the number of
    devices may differ).

    With `devices`, training is data parallel: the windows are split evenly across
    the devices (padded, if their number does not divide evenly, with windows that
    count zero) and the parameters are replicated on each. The loss, its gradient and
    the triangular factors of a least-squares solver's Jacobian are reduced across
    devices, so that each device holds only its share of the solves and of the rows of
    the Jacobian; the result is that of one device, up to rounding. See
    [Scaling out](../usage/scaling-out.md).

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
    - `steps_per_interval`: Solver steps between consecutive observations: `"auto"`
        (see above) or a positive integer, the same for every window.
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
    - `noise`: The standard deviation of the observations' noise, relative to each
        component's largest magnitude in the data, if known. By default it is
        estimated from the residuals.
    - `devices`: The devices to train on: a number (the first that many of
        `jax.devices()`), a sequence of devices, or a `jax.sharding.Mesh` (the
        windows are split across all its axes). Defaults to one device.

    **Returns:**

    A [`diffrax_implicit_node.FitResult`][] with the trained model and the loss
    history.
    """
    observations = as_observations(ts, ys)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"`epochs` must be a non-negative integer, got {epochs!r}.")
    auto = isinstance(steps_per_interval, str) and steps_per_interval == "auto"
    if not auto and (
        isinstance(steps_per_interval, bool)
        or not isinstance(steps_per_interval, int)
        or steps_per_interval < 1
    ):
        raise ValueError(
            f"`steps_per_interval` must be a positive integer or 'auto', got "
            f"{steps_per_interval!r}."
        )
    windows = windows_from(observations, 1 if auto else steps_per_interval)
    num_windows, size = windows.y0.shape
    parallel = data_parallel(devices, num_windows, batch_size)
    optimisation_ = optimisation(optimiser, num_windows, batch_size, key, parallel)
    scale = _checked_scale(scale, size, windows.y0.dtype)

    trainable, frozen = eqx.partition(vector_field, filter_spec)
    trainable, frozen, scale, args = parallel.replicate(
        (trainable, frozen, scale, args)
    )
    residuals = Residuals(
        frozen,
        parallel.shard_windows(windows),
        scale,
        solver,
        windows.max_steps,
        args=args,
    )
    checkpoint_path = None if checkpoint is None else pathlib.Path(checkpoint)
    resuming = checkpoint_path is not None and checkpoint_path.exists()
    if auto and not resuming:
        residuals = _steps_that_solve(residuals, trainable, parallel)
    opt_state = parallel.lay_out_state(optimisation_.init(trainable, residuals), size)
    losses: list[float] = []
    if checkpoint_path is not None:
        # Checkpoints hold host arrays without padding, for any number of devices.
        unpadded = parallel.unpadded(optimisation_.init, trainable, residuals)
    if resuming:
        assert checkpoint_path is not None
        saved = load_checkpoint(checkpoint_path, *unpadded, num_windows)
        trainable, opt_state = parallel.from_host(
            (saved.trainable, saved.opt_state), (trainable, opt_state)
        )
        losses = saved.losses
        residuals = residuals.with_steps(parallel.shard_per_window(saved.steps))

    def save_state(trainable: PyTree, opt_state: PyTree, steps: Array) -> None:
        if checkpoint_path is not None and jax.process_index() == 0:
            trainable, opt_state = parallel.to_host((trainable, opt_state), unpadded)
            steps = parallel.real_windows(steps)
            save_checkpoint(
                checkpoint_path, Checkpoint(trainable, opt_state, losses, steps)
            )

    data_scale_ = data_scale(observations.ys)
    with tqdm.tqdm(
        total=epochs, initial=min(len(losses), epochs), disable=not progress
    ) as bar:
        while True:
            # With automatic steps, the discretisation is checked every
            # `AUTO_ROUND_EPOCHS` epochs, not only at convergence: with too few
            # steps the optimiser may crawl along a biased valley for ever.
            until = min(epochs, len(losses) + AUTO_ROUND_EPOCHS) if auto else epochs
            state = _train_round(
                optimisation_,
                residuals,
                _RoundState(trainable, opt_state, losses),
                epochs,
                until,
                None if checkpoint_path is None else save_state,
                checkpoint_every,
                bar,
            )
            trainable, opt_state = state.trainable, state.opt_state
            message = state.message
            if message or not auto or len(losses) >= epochs:
                break
            # Double the steps of every window whose prediction changes with twice
            # the steps by more than the data allow, and train on from here.
            # (Statistics of the real windows: the padding left out.)
            real = parallel.without_padding(residuals)
            errors = window_errors(real, trainable, data_scale_)
            steps = real.windows.steps
            refine = errors.refine(noise) & (steps < MAX_AUTO_STEPS)
            if not bool(jnp.any(refine)):
                if state.converged:
                    break
                continue
            residuals = _double_steps(residuals, parallel, steps, refine)
            opt_state = parallel.lay_out_state(
                optimisation_.init(trainable, residuals), size
            )
            # Resuming from here starts the next round, as this run does.
            save_state(trainable, opt_state, residuals.windows.steps)
    model = eqx.combine(trainable, frozen)
    residuals = parallel.without_padding(residuals)
    verification = verify(model, observations, residuals, trainable, noise)
    residual_noise = None if noise is None else noise * data_scale_ / np.asarray(scale)
    uncertainty_ = uncertainty(
        model,
        residuals,
        trainable,
        residual_noise,
        DATA_RTOL * data_scale_ / np.asarray(scale),
        observations.ts.shape[1] - 1,
    )
    if not verification.verified:
        warnings.warn(
            f"The trained model does not reproduce the data: {verification.message}.",
            UnverifiedFitWarning,
            stacklevel=2,
        )
    return FitResult(
        model=model,
        losses=np.asarray(losses),
        opt_state=opt_state,
        stopped_early=bool(message),
        message=message,
        verification=verification,
        uncertainty=uncertainty_,
        steps=np.asarray(residuals.windows.steps).reshape(observations.ts.shape[0], -1),
        devices=parallel.num_devices,
    )


def _steps_that_solve(
    residuals: Residuals, trainable: PyTree, parallel: DataParallel
) -> Residuals:
    """Doubles the steps of every window whose solve fails with the starting parameters
    (at most `MAX_AUTO_STEPS`): one failed window makes the loss infinite, and
    training could not start."""
    while True:
        real = parallel.without_padding(residuals)
        _, succeeded = window_predictions(real, trainable)
        steps = real.windows.steps
        failed = jnp.invert(succeeded) & (steps < MAX_AUTO_STEPS)
        if not bool(jnp.any(failed)):
            return residuals
        residuals = _double_steps(residuals, parallel, steps, failed)


def _double_steps(
    residuals: Residuals,
    parallel: DataParallel,
    steps: Int[Array, " windows"],
    windows: Bool[Array, " windows"],
) -> Residuals:
    """`residuals` with twice the `steps` (those of the real windows) in each real
    window that `windows` marks."""
    return residuals.with_steps(
        parallel.shard_per_window(jnp.where(windows, 2 * steps, steps))
    )


class _RoundState(NamedTuple):
    trainable: PyTree
    opt_state: PyTree
    # The loss of every epoch so far, of this round and the earlier ones.
    losses: list[float]
    message: str = ""
    converged: bool = False


def _train_round(
    optimisation_: AbstractOptimisation,
    residuals: Residuals,
    state: _RoundState,
    epochs: int,
    until: int,
    save_state: Callable[[PyTree, PyTree, Array], None] | None,
    checkpoint_every: int,
    bar: tqdm.tqdm,
) -> _RoundState:
    """Epochs on the windows in their current numbers of steps, until the optimiser
    converges or `until` epochs in all (of at most `epochs`, which decides when to
    checkpoint); appends to `state.losses` in place."""
    trainable, opt_state, losses = state.trainable, state.opt_state, state.losses
    steps = residuals.windows.steps

    def save():
        if save_state is not None:
            save_state(trainable, opt_state, steps)

    last_good = trainable
    best_loss, best = math.inf, trainable
    message = ""
    converged = False
    epoch_start = trainable, opt_state
    try:
        for epoch in range(len(losses), until):
            epoch_start = trainable, opt_state
            outcome = optimisation_.epoch(
                epoch, trainable, opt_state, last_good, residuals
            )
            trainable, opt_state = outcome.trainable, outcome.opt_state
            last_good = outcome.last_good
            if outcome.failure:
                message = f"Training stopped in epoch {len(losses)}: {outcome.failure}."
                warnings.warn(message, RuntimeWarning, stacklevel=3)
                break
            losses.append(outcome.loss)
            # A full batch's loss is that of the parameters before its step, a
            # least-squares step's that of the parameters after it; a minibatch
            # epoch's loss belongs to no single set of parameters: keep those at
            # the end of the best epoch.
            if outcome.loss < best_loss:
                best_loss = outcome.loss
                before_step = optimisation_.loss_before_step
                best = epoch_start[0] if before_step else trainable
            bar.set_postfix(loss=f"{outcome.loss:.4e}")
            bar.update()
            if (
                len(losses) % checkpoint_every == 0
                or len(losses) == epochs
                or outcome.converged
            ):
                save()
            if outcome.converged:
                converged = True
                break
    except KeyboardInterrupt:
        # Drop the interrupted epoch, so that resuming repeats it exactly.
        trainable, opt_state = epoch_start
        save()
        message = (
            f"Training interrupted in epoch {len(losses)}. The result holds the "
            "parameters with the lowest loss so far"
            + (
                "; the checkpoint holds the state to resume from."
                if save_state is not None
                else "."
            )
        )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        if best_loss < math.inf:
            trainable = best
    return _RoundState(trainable, opt_state, losses, message, converged)


def _checked_scale(
    scale: Float[ArrayLike, " n"] | None, size: int, dtype: jnp.dtype
) -> Float[Array, " n"]:
    if scale is None:
        return jnp.ones(size, dtype=dtype)
    scale = jnp.asarray(scale, dtype=dtype)
    if scale.shape != (size,) or not bool(jnp.all(scale > 0)):
        raise ValueError(f"`scale` must be {size} positive numbers, one per component.")
    return scale
