"""Stage 5 of learning: does the trained model reproduce the data? Two checks that
do not trust the training loss: the learned equations integrated accurately over
each whole trajectory, and the training residuals recomputed with twice the steps."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._data import Observations
from ._solver import RadauIIA5
from ._windows import Residuals


# Errors below this fraction of a component's magnitude count as reproducing noise-free
# data: the floor of the data's resolution.
DATA_RTOL = 1e-4
# The solver's own error must stay this far below the data's resolution: the
# residuals then measure the equations, not their discretisation.
DISCRETISATION_FRACTION = 0.1
# Without a noise level, automatic steps refine until the discretisation changes a
# prediction by less than a tenth of this: far below the resolution verified at, since
# along a stiff direction a small bias of the residuals moves the coefficients far
# (on Kaps' problem, stopping at a tenth of `DATA_RTOL` left coefficients 2 % off;
# at this, 2e-5, as fixed fine steps do).
REFINEMENT_RTOL = 1e-7
# A fit whose residuals, with no noise level given, exceed this fraction of the data's
# magnitude does not fit the data: its residuals are not a noise level to verify at.
MAX_ESTIMATED_NOISE = 0.05
# The learned model is integrated this accurately when checking it, far below
# `DATA_RTOL`, so that what is measured is the model's error, not the check's.
_CHECK_TOL = 1e-10


class Verification(eqx.Module):
    """Whether a trained model reproduces its data, and by how much it misses.

    All figures are relative to each component's largest magnitude in the data, and
    are root-mean-square over the observations (or windows).

    **Attributes:**

    - `verified`: Whether the model reproduces the data: its trajectories were
        integrated, `trajectory_error <= 2 resolution` and
        `discretisation_bias <= resolution / 10`; and, where the resolution was
        estimated from the residuals (no `noise` given), it is at most 5 %: larger
        residuals mean that the model does not fit, not that the data are coarse.
    - `trajectory_error`: The error of the learned model integrated (adaptive
        `RadauIIA5`, tolerance 1e-10) from each trajectory's first observation over
        its whole span, against the observations. `inf` if a solve failed.
    - `max_trajectory_error`: The largest such error of any observation.
    - `discretisation_bias`: How much the predicted end of each window changes when
        the training solver takes twice the steps: the error of the discretisation
        that the training residuals contain.
    - `resolution`: What the data resolves: the noise level (the one given, or the
        root-mean-square of the training residuals), at least 1e-4.
    - `message`: Why the model is not verified, in words; empty if it is.
    """

    verified: bool
    trajectory_error: float
    max_trajectory_error: float
    discretisation_bias: float
    resolution: float
    message: str

    def as_dict(self) -> dict[str, bool | float | str]:
        """The record as a JSON-ready dictionary."""
        return dict(
            verified=self.verified,
            trajectory_error=self.trajectory_error,
            max_trajectory_error=self.max_trajectory_error,
            discretisation_bias=self.discretisation_bias,
            resolution=self.resolution,
            message=self.message,
        )


@eqx.filter_jit
def reference_solve(
    vector_field: PyTree,
    ts: Float[Array, "B T"],
    y0s: Float[Array, "B n"],
    args: PyTree = None,
    tol: float = 1e-12,
) -> tuple[Float[Array, "B T n"], Bool[Array, " B"]]:
    """Integrates each trajectory from `y0s[b]` at `ts[b, 0]` with adaptive
    `RadauIIA5` (tolerance `tol`), saving at `ts[b]`. Returns the states and whether
    each solve succeeded."""

    def solve(ts, y0):
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            RadauIIA5(),
            ts[0],
            ts[-1],
            None,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(
                rtol=tol, atol=tol, norm=optx.max_norm
            ),
            max_steps=100_000,
            throw=False,
        )
        assert solution.ys is not None
        return solution.ys, solution.result == diffrax.RESULTS.successful

    return jax.vmap(solve)(ts, y0s)


def data_scale(ys: Float[np.ndarray, "B T n"]) -> Float[np.ndarray, " n"]:
    """Each component's largest magnitude in the data (1 where it is always 0)."""
    scale = np.max(np.abs(ys), axis=(0, 1))
    return np.where(scale > 0, scale, 1.0)


@eqx.filter_jit
def window_predictions(
    residuals: Residuals, trainable: PyTree
) -> tuple[Float[Array, "m n"], Bool[Array, " m"]]:
    return residuals.predictions(trainable)


class WindowErrors(eqx.Module):
    """The training residuals and their discretisation error, window by window, in
    units of each component's magnitude in the data."""

    residuals: Float[Array, "m n"]
    change: Float[Array, "m n"]

    def resolution(self, noise: float | None) -> float:
        """The data's resolution: the noise level (if not given, the root-mean-square
        of the residuals), at least `DATA_RTOL`."""
        if noise is None:
            # Of the windows that could be integrated: a failed solve's infinite
            # residual would make any error look resolved.
            finite = jnp.isfinite(self.residuals)
            squares = jnp.where(finite, self.residuals, 0.0) ** 2
            noise = float(jnp.sqrt(jnp.sum(squares) / max(int(jnp.sum(finite)), 1)))
        return max(noise, DATA_RTOL)

    def refine(self, noise: float | None) -> Bool[Array, " m"]:
        """Which windows' discretisation errors exceed a tenth of the `noise` given,
        else of `REFINEMENT_RTOL`. (Not of the residuals: those of a fit stuck in a
        poor minimum are large, and would stop the refinement that may free it.)"""
        resolution = REFINEMENT_RTOL if noise is None else noise
        tolerance = DISCRETISATION_FRACTION * resolution
        return ~(jnp.max(jnp.abs(self.change), axis=1) <= tolerance)


def window_errors(
    residuals: Residuals,
    trainable: PyTree,
    scale: Float[np.ndarray, " n"],
    steps: Int[Array, " m"] | None = None,
) -> WindowErrors:
    """The scaled residuals of the windows in their `steps` (by default those of
    `residuals`), and how much the predictions change with twice as many steps. A
    failed solve gives an infinite change."""
    if steps is not None:
        residuals = residuals.with_steps(steps)
    predictions, succeeded = window_predictions(residuals, trainable)
    doubled = residuals.with_steps(2 * residuals.windows.steps)
    finer, finer_succeeded = window_predictions(doubled, trainable)
    scale = jnp.asarray(scale)[None, :]
    ok = (succeeded & finer_succeeded)[:, None]
    return WindowErrors(
        residuals=jnp.where(ok, (predictions - residuals.windows.y1) / scale, jnp.inf),
        change=jnp.where(ok, (finer - predictions) / scale, jnp.inf),
    )


def _rms(x: Array) -> float:
    return float(jnp.sqrt(jnp.mean(x**2)))


def verify(
    model: PyTree,
    observations: Observations,
    residuals: Residuals,
    trainable: PyTree,
    noise: float | None,
) -> Verification:
    """Checks the trained `model` against the `observations` it was trained on (see
    [`diffrax_implicit_node.FitResult`][]); `noise` is the standard deviation of the
    observations' noise relative to each component's magnitude, if known."""
    scale = data_scale(observations.ys)
    errors = window_errors(residuals, trainable, scale)
    resolution = errors.resolution(noise)
    bias = _rms(errors.change)
    ys = jnp.asarray(observations.ys)
    simulated, succeeded = reference_solve(
        model, jnp.asarray(observations.ts), ys[:, 0], residuals.args, _CHECK_TOL
    )
    relative = (simulated - ys) / jnp.asarray(scale)[None, None, :]
    integrated = bool(jnp.all(succeeded)) and bool(jnp.all(jnp.isfinite(relative)))
    trajectory_error = _rms(relative) if integrated else float("inf")
    max_error = float(jnp.max(jnp.abs(relative))) if integrated else float("inf")
    problems = []
    if not integrated:
        problems.append(
            "the learned equations could not be integrated over the whole span of "
            "every trajectory (they blow up or are too stiff)"
        )
    elif trajectory_error > 2 * resolution:
        problems.append(
            f"integrated from each trajectory's first observation, the learned "
            f"equations miss the data by {trajectory_error:.1e} (root mean square, "
            f"relative), more than twice the data's resolution {resolution:.1e}"
        )
    if noise is None and resolution > MAX_ESTIMATED_NOISE:
        problems.append(
            f"the training residuals are {resolution:.1e} of the data's magnitude "
            "(root mean square, relative): the model does not fit the data (train "
            "longer; or, if the data really are this noisy, give their noise level)"
        )
    if not bias <= DISCRETISATION_FRACTION * resolution:
        problems.append(
            f"the training residuals change by {bias:.1e} when the solver takes "
            f"twice the steps, more than a tenth of the data's resolution "
            f"{resolution:.1e}: "
            "the discretisation, not the equations, fits the data (use more steps "
            "per gap, or `steps_per_interval='auto'`)"
        )
    return Verification(
        verified=not problems,
        trajectory_error=trajectory_error,
        max_trajectory_error=max_error,
        discretisation_bias=bias,
        resolution=resolution,
        message="; ".join(problems),
    )
