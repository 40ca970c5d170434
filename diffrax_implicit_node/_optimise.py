"""Stage 4 of learning: the optimiser's steps on the residuals of the windows, one
epoch at a time, for a first-order Optax transformation or an Optimistix
least-squares solver alike."""

import abc
import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, Scalar

from ._sharding import DataParallel
from ._windows import Residuals


_NON_FINITE_ADVICE = (
    "The result holds the last parameters with a finite loss. An explicit solver on "
    "stiff data does this; try an implicit solver, a smaller learning rate or more "
    "`steps_per_interval`"
)
_NON_FINITE_LOSS = "the loss is not finite (or a solve failed). " + _NON_FINITE_ADVICE
_NON_FINITE_GRADIENT = "the gradient is not finite. " + _NON_FINITE_ADVICE
_NO_TAGS: frozenset[object] = frozenset()


class Epoch(NamedTuple):
    """What one epoch leaves behind.

    `trainable` and `opt_state` are the state after the epoch (after a failure, those
    at its start), `last_good` the last parameters whose loss was finite, `loss` the
    epoch's loss, `failure` why it stopped early (empty if it did not) and
    `converged` whether a least-squares solver has met its tolerances.
    """

    trainable: PyTree
    opt_state: PyTree
    last_good: PyTree
    loss: float
    failure: str = ""
    converged: bool = False


class AbstractOptimisation(eqx.Module):
    """How [`diffrax_implicit_node.fit`][] takes optimiser steps."""

    @abc.abstractmethod
    def init(self, trainable: PyTree, residuals: Residuals) -> PyTree:
        """The optimiser's initial state."""

    @abc.abstractmethod
    def epoch(
        self,
        epoch: int,
        trainable: PyTree,
        opt_state: PyTree,
        last_good: PyTree,
        residuals: Residuals,
    ) -> Epoch:
        """One epoch of optimiser steps."""

    @property
    @abc.abstractmethod
    def loss_before_step(self) -> bool:
        """Whether an epoch's loss is that of the parameters before its step (a full
        batch of a first-order method), not after it (a least-squares step) nor of
        no single set of parameters (minibatches)."""


@eqx.filter_jit
def _train_step(
    trainable: PyTree,
    opt_state: PyTree,
    optimiser: optax.GradientTransformation,
    residuals: Residuals,
    indices: Int[Array, " b"] | None,
) -> tuple[PyTree, PyTree, Scalar, Bool[Array, ""]]:
    def loss_fn(trainable):
        return jnp.sum(residuals(trainable, indices) ** 2)

    loss, grads = eqx.filter_value_and_grad(loss_fn)(trainable)
    grads_finite = jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    # Optax mixes its int32 step counters with default-width integers and floats, which
    # strict dtype promotion refuses: let its update promote as JAX does by default.
    with jax.numpy_dtype_promotion("standard"):
        if isinstance(optimiser, optax.GradientTransformationExtraArgs):
            # Line-search optimisers such as `optax.lbfgs` need the loss function.
            updates, opt_state = optimiser.update(
                grads, opt_state, trainable, value=loss, grad=grads, value_fn=loss_fn
            )
        else:
            updates, opt_state = optimiser.update(grads, opt_state, trainable)
    trainable = eqx.apply_updates(trainable, updates)
    return trainable, opt_state, loss, grads_finite


class FirstOrder(AbstractOptimisation):
    """An Optax transformation, on all windows or on minibatches of them."""

    transformation: optax.GradientTransformation
    num_windows: int = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    key: PRNGKeyArray | None
    parallel: DataParallel

    def __check_init__(self):
        if not 1 <= self.batch_size <= self.num_windows:
            raise ValueError(
                f"`batch_size` must be between 1 and the number of intervals, "
                f"{self.num_windows}, got {self.batch_size}."
            )
        if self.batch_size < self.num_windows and self.key is None:
            raise ValueError("Minibatches (`batch_size`) need a `key`.")

    @property
    def loss_before_step(self) -> bool:
        return self.batch_size == self.num_windows

    def init(self, trainable: PyTree, residuals: Residuals) -> PyTree:
        del residuals
        # Some optimisers (`optax.lbfgs`) start with weakly typed scalars that the
        # first update makes strongly typed: fix the types now, or the second epoch
        # recompiles.
        return jax.tree.map(
            lambda x: jnp.asarray(x, dtype=x.dtype) if eqx.is_array(x) else x,
            self.transformation.init(trainable),
        )

    def _batches(self, epoch: int) -> list[Int[Array, " b"] | None]:
        if self.batch_size == self.num_windows:
            return [None]  # All windows, the padding included (it counts zero).
        assert self.key is not None
        # A key per epoch: resuming from a checkpoint needs no key state.
        order = jr.permutation(jr.fold_in(self.key, epoch), self.num_windows)
        num_batches = self.num_windows // self.batch_size
        batches = order[: num_batches * self.batch_size].reshape(num_batches, -1)
        return [self.parallel.shard_batch(indices) for indices in batches]

    def epoch(
        self,
        epoch: int,
        trainable: PyTree,
        opt_state: PyTree,
        last_good: PyTree,
        residuals: Residuals,
    ) -> Epoch:
        """One optimiser step per batch; the loss is the sum over the batches."""
        epoch_loss = 0.0
        for indices in self._batches(epoch):
            try:
                new_trainable, new_opt_state, loss, grads_finite = _train_step(
                    trainable, opt_state, self.transformation, residuals, indices
                )
                loss = float(loss)
            except eqx.EquinoxRuntimeError:
                # Some solvers check for NaN themselves, even with `throw=False`.
                return Epoch(
                    last_good, opt_state, last_good, epoch_loss, _NON_FINITE_LOSS
                )
            if not np.isfinite(loss):
                return Epoch(
                    last_good, opt_state, last_good, epoch_loss, _NON_FINITE_LOSS
                )
            last_good = trainable
            if not bool(grads_finite):
                return Epoch(
                    last_good, opt_state, last_good, epoch_loss, _NON_FINITE_GRADIENT
                )
            trainable, opt_state = new_trainable, new_opt_state
            epoch_loss += loss
        return Epoch(trainable, opt_state, last_good, epoch_loss)


def least_squares_problem(
    residuals: Residuals, trainable: PyTree
) -> tuple[Float[Array, " p"], Callable[[Array, None], tuple], Callable]:
    """The residuals as a function `fn(flat, None) -> (residuals, None)` of the
    flattened parameters, for an Optimistix least-squares solver; returns
    `(flat, fn, unflatten)`.

    Its forward-mode derivative materialises the Jacobian
    (`Residuals.value_and_jacobian`): Optimistix linearises `fn` and keeps the
    linearisation in its state, which for the solves of thousands of intervals would
    otherwise hold every intermediate value of every step (gigabytes, in memory and
    in each checkpoint), instead of a residuals-by-parameters matrix.
    """
    flat, unflatten = jax.flatten_util.ravel_pytree(trainable)

    @jax.custom_jvp
    def with_jacobian(flat):
        return residuals(unflatten(flat))

    @with_jacobian.defjvp
    def _(primals, tangents):
        (flat,), (tangent,) = primals, tangents
        value, jacobian = residuals.value_and_jacobian(unflatten(flat))
        return value, jacobian @ tangent

    return flat, lambda flat, _: (with_jacobian(flat), None), unflatten


@eqx.filter_jit
def _least_squares_init(
    trainable: PyTree, least_squares: optx.AbstractGaussNewton, residuals: Residuals
) -> PyTree:
    flat, fn, _ = least_squares_problem(residuals, trainable)
    residuals_struct = jax.eval_shape(lambda: fn(flat, None)[0])
    return least_squares.init(fn, flat, None, {}, residuals_struct, None, _NO_TAGS)


@eqx.filter_jit
def _least_squares_step(
    trainable: PyTree,
    state: PyTree,
    least_squares: optx.AbstractGaussNewton,
    residuals: Residuals,
) -> tuple[PyTree, PyTree, Scalar, Bool[Array, ""], optx.RESULTS]:
    # One step of Optimistix's own loop (`optx.least_squares`), so that `fit` can
    # report, checkpoint and stop between steps.
    flat, fn, unflatten = least_squares_problem(residuals, trainable)
    flat, state, _ = least_squares.step(fn, flat, None, {}, state, _NO_TAGS)
    converged, result = least_squares.terminate(fn, flat, None, {}, state, _NO_TAGS)
    # The residuals at the accepted point: a trust region never accepts a worse one.
    loss = jnp.sum(state.f_info.residual**2)
    return unflatten(flat), state, loss, converged, result


class LeastSquares(AbstractOptimisation):
    """An Optimistix least-squares solver of the Gauss--Newton family: one of its
    steps (accepted or not) per epoch, on all windows."""

    solver: optx.AbstractGaussNewton

    @property
    def loss_before_step(self) -> bool:
        return False

    def init(self, trainable: PyTree, residuals: Residuals) -> PyTree:
        return _least_squares_init(trainable, self.solver, residuals)

    def epoch(
        self,
        epoch: int,
        trainable: PyTree,
        opt_state: PyTree,
        last_good: PyTree,
        residuals: Residuals,
    ) -> Epoch:
        del epoch, last_good
        try:
            new_trainable, new_state, loss, converged, result = _least_squares_step(
                trainable, opt_state, self.solver, residuals
            )
            loss = float(loss)
        except eqx.EquinoxRuntimeError:
            return Epoch(trainable, opt_state, trainable, math.nan, _NON_FINITE_LOSS)
        if not np.isfinite(loss):
            # Only the starting point can do this: a trust region rejects such a step.
            return Epoch(trainable, opt_state, trainable, loss, _NON_FINITE_LOSS)
        if result != optx.RESULTS.successful:
            failure = f"{self.solver.__class__.__name__} failed: {optx.RESULTS[result]}"
            return Epoch(trainable, opt_state, trainable, loss, failure)
        return Epoch(new_trainable, new_state, new_trainable, loss, "", bool(converged))


def optimisation(
    optimiser: optax.GradientTransformation | optx.AbstractGaussNewton,
    num_windows: int,
    batch_size: int | None,
    key: PRNGKeyArray | None,
    parallel: DataParallel,
) -> AbstractOptimisation:
    """The optimiser of `fit`, with its batching and its layout on the devices;
    checks the combination."""
    if isinstance(optimiser, optx.AbstractGaussNewton):
        if batch_size is not None:
            raise ValueError(
                "A least-squares `optimiser` fits all intervals at once: leave out "
                "`batch_size`."
            )
        return LeastSquares(parallel.with_sharded_solve(optimiser))
    return FirstOrder(
        optimiser,
        num_windows,
        num_windows if batch_size is None else batch_size,
        key,
        parallel,
    )
