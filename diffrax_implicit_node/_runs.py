"""One training run by names, as the command line and the example studies make it:
shared, so that both train, time and report alike."""

import time
import warnings
from typing import Literal, NamedTuple

import numpy as np
from jaxtyping import Float

from ._model import NeuralVectorField
from ._names import optimiser_from_name, solver_from_name
from ._sparsify import sparsify
from ._train import fit, FitResult


class TrainingRun(NamedTuple):
    """A finished run: `fit`'s result (of the sparsified equations, if pruned), its
    wall-clock time in seconds, and the coefficients that pruning removed and those it
    tried to remove but kept (see [`diffrax_implicit_node.SparseFit`][])."""

    result: FitResult
    seconds: float
    removed: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()

    @property
    def final_loss(self) -> float:
        """The loss of the last epoch (NaN if there was none)."""
        losses = self.result.losses
        return float(losses[-1]) if len(losses) else float("nan")

    def steps_summary(self) -> str:
        """The solver steps per gap, in words."""
        steps = self.result.steps
        low, high = int(steps.min()), int(steps.max())
        if low == high:
            return f"{low} step(s) per gap"
        more = int(np.sum(steps > low))
        return (
            f"{low} to {high} steps per gap, more than {low} in {more} of "
            f"{steps.size} gaps"
        )


def train_by_name(
    model: NeuralVectorField,
    ts: Float[np.ndarray, "..."],
    ys: Float[np.ndarray, "..."],
    *,
    solver: str,
    optimiser: str,
    epochs: int,
    steps: int | Literal["auto"],
    progress: bool,
    devices: int = 1,
    prune: bool = False,
    noise: float | None = None,
) -> TrainingRun:
    """Trains with the solver and optimiser of these names (see
    [`diffrax_implicit_node.solver_from_name`][] and
    [`diffrax_implicit_node.optimiser_from_name`][]) and, with `prune`, removes the
    terms the data do not show ([`diffrax_implicit_node.sparsify`][]); `noise` is
    `fit`'s. The warnings
    of `fit` are left to the caller to report, from the result."""

    def train(model: NeuralVectorField) -> FitResult:
        return fit(
            model,
            ts,
            ys,
            solver=solver_from_name(solver),
            optimiser=optimiser_from_name(optimiser),
            epochs=epochs,
            steps_per_interval=steps,
            progress=progress,
            devices=devices,
            noise=noise,
        )

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = train(model)
        if not prune:
            return TrainingRun(result, time.perf_counter() - start)
        sparse = sparsify(result, train)
    return TrainingRun(
        sparse.result, time.perf_counter() - start, sparse.removed, sparse.rejected
    )
