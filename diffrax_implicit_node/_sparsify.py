"""Stage 7 of learning: equations with only the terms that the data show. Terms that
are consistent with zero are removed, the rest refitted, and the sparser equations
kept only if they still reproduce the data."""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import numpy as np

from ._model import NeuralVectorField
from ._pinet import PiNet
from ._polynomial import PolynomialLibrary
from ._symbolic import as_polynomial_library, coefficient_names
from ._train import FitResult


class SparseFit(NamedTuple):
    """What [`diffrax_implicit_node.sparsify`][] returns.

    **Attributes:**

    - `result`: The fit of the sparsest equations that reproduced the data: a
        [`diffrax_implicit_node.FitResult`][] whose model's learned part is a
        [`diffrax_implicit_node.PolynomialLibrary`][] (with the removed terms), or
        the fit passed in, if no term could be removed.
    - `removed`: The names of the removed coefficients (`"x0': x1**2"`), in the
        order they were removed.
    - `rejected`: The names of the coefficients that were removed in a refit that
        did not reproduce the data, and are kept: some or all of them are needed.
    """

    result: FitResult
    removed: tuple[str, ...]
    rejected: tuple[str, ...]


def _significance_order(result: FitResult) -> list[str]:
    """The coefficients within two standard errors of zero, least significant (the
    smallest |value| / standard error) first."""
    uncertainty = result.uncertainty
    candidates = set(uncertainty.consistent_with_zero())
    significance = {
        name: abs(value) / error
        for name, value, error in zip(
            uncertainty.names, uncertainty.values, uncertainty.stderr
        )
        if name in candidates
    }
    return sorted(significance, key=significance.__getitem__)


def _without(model: NeuralVectorField, names: list[str]) -> NeuralVectorField:
    library = as_polynomial_library(model.learned)  # pyright: ignore[reportArgumentType]
    terms = np.isin(coefficient_names(library), names)
    return eqx.tree_at(
        lambda m: m.learned,
        model,
        library.without_terms(terms.reshape(library.coefficients.shape)),
    )


def sparsify(
    result: FitResult,
    refit: Callable[[NeuralVectorField], FitResult],
    max_refits: int = 4,
) -> SparseFit:
    r"""Removes the terms of learned polynomial equations that the data do not show,
    and refits the rest.

    A term whose coefficient is within two standard errors of zero
    (`result.uncertainty.consistent_with_zero()`) may be spurious: the data do not show
    that it is there. All such terms are removed at once and the remaining
    coefficients refitted from their learned values (`refit`, typically
    [`diffrax_implicit_node.fit`][] with the same data and options). If the refitted
    equations reproduce the data (`verification.verified`), they replace the fit, and
    the terms of the new fit that are consistent with zero are tried in turn. If not,
    a term was needed after all (the standard errors are a linear approximation, and
    a stiff direction of the loss can make a needed term look like zero: for Kaps'
    problem, the stiff rate and its slow-manifold partner): the removal is undone and
    only the less significant half of the terms (by |value| / standard error) is
    tried instead.

    A fit that is not verified is returned as it is: its standard errors say nothing.

    **Arguments:**

    - `result`: A verified fit of a [`diffrax_implicit_node.NeuralVectorField`][]
        whose learned part is a [`diffrax_implicit_node.PiNet`][] or a
        [`diffrax_implicit_node.PolynomialLibrary`][] (a PiNet is replaced by the
        library it equals).
    - `refit`: Trains a model as `result` was trained and returns the
        [`diffrax_implicit_node.FitResult`][], e.g.
        `lambda model: fit(model, ts, ys, solver=..., optimiser=..., epochs=...)`.
    - `max_refits`: The most refits.

    **Returns:**

    A [`diffrax_implicit_node.SparseFit`][].
    """
    model = result.model
    if not (
        isinstance(model, NeuralVectorField)
        and isinstance(model.learned, PiNet | PolynomialLibrary)
    ):
        raise TypeError(
            "`sparsify` needs the fit of a NeuralVectorField whose learned part is a "
            f"PiNet or a PolynomialLibrary, got {type(model).__name__}."
        )
    removed: list[str] = []
    tried: list[str] = []
    needed: set[str] = set()  # Each failed when removed alone.
    candidates = _significance_order(result) if result.verification.verified else []
    for _ in range(max_refits):
        candidates = [name for name in candidates if name not in needed]
        if not candidates:
            break
        trial = refit(_without(result.model, removed + candidates))
        if trial.verification.verified:
            result = trial
            removed += candidates
            candidates = _significance_order(result)
        else:
            # Undo, and try the less significant half.
            tried += candidates
            if len(candidates) == 1:
                needed.update(candidates)
            candidates = candidates[: len(candidates) // 2]
    rejected = tuple(dict.fromkeys(name for name in tried if name not in removed))
    return SparseFit(result, tuple(removed), rejected)
