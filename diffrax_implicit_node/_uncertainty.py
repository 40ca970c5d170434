"""Stage 6 of learning: how well the data determine what was learned. Standard errors
and practically unidentifiable directions, from the Gauss--Newton Jacobian of the
training residuals at the solution."""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._model import NeuralVectorField
from ._pinet import PiNet
from ._polynomial import PolynomialLibrary
from ._symbolic import as_polynomial_library, coefficient_names
from ._windows import Residuals


# A direction whose scaled singular value is below this fraction of the largest one
# is not determined by the data in double precision.
UNIDENTIFIABLE_RATIO = 1e-9
# The coefficients that make up such a direction: its components above this.
_INVOLVED = 0.1
# A quantity whose standard error exceeds this fraction of its value is poorly
# determined by the data.
POORLY_DETERMINED_RATIO = 0.1


class Uncertainty(eqx.Module):
    """How well the data determine the learned quantities (the polynomial coefficients
    of a [`diffrax_implicit_node.PiNet`][] or a
    [`diffrax_implicit_node.PolynomialLibrary`][], else the trainable parameters), in
    the linear approximation of the Gauss--Newton method.

    **Attributes:**

    - `names`: The quantities: `"x0': x1**2"` (the coefficient of `x1**2` in the
        equation of `x0`) or `"p[i]"` (the i-th trainable parameter, flattened).
    - `values`: Their values, a NumPy array.
    - `stderr`: Their standard errors; `inf` for those in an unidentifiable
        direction.
    - `singular_values`: The singular values of the Jacobian of the residuals with
        respect to the quantities, each column scaled to unit norm, decreasing and
        relative to the largest.
    - `unidentifiable`: For each direction whose scaled singular value is below
        1e-9, the names of the quantities it involves.
    - `noise`: The standard deviation of the observations' noise used, in the units
        of `fit`'s `scale`: the one given, or else estimated from the residuals; but
        at least the resolution at which `fit` verifies its model (a relative
        `1e-4`). So the standard errors say how far the quantities could move while
        the model still reproduces the data as well as it was verified to, also for
        noise-free data, whose tiny residuals would otherwise promise a precision
        that a sloppy direction of the fit does not have.
    """

    names: tuple[str, ...]
    values: np.ndarray
    stderr: np.ndarray
    singular_values: np.ndarray
    unidentifiable: tuple[tuple[str, ...], ...]
    noise: float

    def by_equation(self, which: np.ndarray) -> dict[str, dict[str, float]]:
        """`which` (e.g. `stderr`), keyed by equation and monomial like
        [`diffrax_implicit_node.coefficients`][], for quantities named `"x0': m"`."""
        out: dict[str, dict[str, float]] = {}
        for name, value in zip(self.names, which):
            equation, _, monomial = name.partition("': ")
            out.setdefault(equation, {})[monomial] = float(value)
        return out

    def poorly_determined(self) -> tuple[str, ...]:
        """The quantities the data do not pin down: those whose standard error exceeds
        a tenth of their own value (if they differ from zero by more than two standard
        errors), or a tenth of the largest value in their equation (for the
        coefficients of a polynomial; else of all values). The second catches a large
        term that the data cannot tell from zero."""
        values, stderr = np.abs(self.values), self.stderr
        equations = [name.partition("': ")[0] for name in self.names]
        largest = {e: 0.0 for e in equations}
        for equation, value in zip(equations, values):
            largest[equation] = max(largest[equation], float(value))
        scale = np.array([largest[e] for e in equations])
        nonzero = values > 2 * np.where(np.isfinite(stderr), stderr, 0)
        loose = ~(stderr <= POORLY_DETERMINED_RATIO * values)
        large = ~(stderr <= POORLY_DETERMINED_RATIO * scale)
        flagged = (nonzero & loose) | large
        return tuple(n for n, f in zip(self.names, flagged) if f)

    def consistent_with_zero(self) -> tuple[str, ...]:
        """The quantities within two (finite) standard errors of zero: the data do
        not show that their terms are there at all."""
        return tuple(
            n
            for n, v, e in zip(self.names, self.values, self.stderr)
            if np.isfinite(e) and abs(v) <= 2 * e
        )


@eqx.filter_jit
def _start_sensitivities(
    residuals: Residuals, trainable: PyTree
) -> Float[Array, "m n n"]:
    """`M[k, i, j]`: how window k's predicted end `i` moves with its start `j`."""
    windows = residuals.windows

    def predict(y0):
        moved = eqx.tree_at(lambda w: w.y0, windows, y0)
        return residuals.predictions(trainable, moved)[0]

    def column(direction):
        tangent = jnp.broadcast_to(direction, windows.y0.shape)
        return jax.jvp(predict, (windows.y0,), (tangent,))[1]

    # One solve whose tangents are batched, not one solve per column: independent
    # solves in one program run their batched LU factorisations concurrently, which
    # deadlocks XLA:CPU (docs/further_details/xla_cpu_hang.md).
    basis = jnp.eye(windows.y0.shape[1], dtype=windows.y0.dtype)
    return jax.vmap(column, out_axes=-1)(basis)


class _Exposure(NamedTuple):
    # A^T J: how each observation's noise (in the residuals' scaled units) moves
    # the residuals along each column of J, shape (B, T, n, p); and tr(A A^T).
    matrix: np.ndarray
    trace: float


def _noise_exposure(
    residuals: Residuals,
    trainable: PyTree,
    jacobian: np.ndarray,
    num_trajectories: int,
) -> _Exposure:
    scale = np.asarray(residuals.scale)
    sensitivity = np.asarray(_start_sensitivities(residuals, trainable))
    # In the residuals' scaled units.
    sensitivity = sensitivity / scale[None, :, None] * scale[None, None, :]
    num_windows, size = sensitivity.shape[:2]
    per_window = jacobian.reshape(num_windows, size, -1)
    shape = (num_trajectories, num_windows // num_trajectories, size, -1)
    matrix = np.zeros((num_trajectories, shape[1] + 1, size, jacobian.shape[1]))
    # r_k = (prediction_k(y_k) - y_{k+1}) / s.
    matrix[:, 1:] -= per_window.reshape(shape)
    matrix[:, :-1] += np.einsum("kij,kip->kjp", sensitivity, per_window).reshape(shape)
    trace = float(num_windows * size + np.sum(sensitivity**2))
    return _Exposure(matrix, trace)


@eqx.filter_jit
def _residuals_and_jacobian(
    residuals: Residuals, trainable: PyTree
) -> tuple[Float[Array, " r"], Float[Array, "r p"]]:
    # Compiled once per structure of model and data, reused by every fit.
    return residuals.value_and_jacobian(trainable)


def uncertainty(
    model: PyTree,
    residuals: Residuals,
    trainable: PyTree,
    noise: Float[np.ndarray, " n"] | None,
    resolution: Float[np.ndarray, " n"],
    windows_per_trajectory: int,
) -> Uncertainty:
    """The standard errors of what `fit` learned, and its unidentifiable directions.

    For a [`diffrax_implicit_node.NeuralVectorField`][] around a PiNet, these are of
    the polynomial coefficients, not of the PiNet's parameters: the vector field, and
    so the residuals, depend on the parameters only through the coefficients, and the
    many parameters of a PiNet are redundant. The Jacobian is then taken with respect
    to the coefficients of every monomial up to the PiNet's degree, the PiNet
    replaced by the [`diffrax_implicit_node.PolynomialLibrary`][] it equals; a
    library's parameters are its coefficients already. `noise`: the standard deviation
    of each component's observations, in the residuals' units, if known;
    `resolution`: the least noise level to assume, in the same units (see
    `Uncertainty.noise`).
    """
    if isinstance(model, NeuralVectorField) and isinstance(
        model.learned, PiNet | PolynomialLibrary
    ):
        library = as_polynomial_library(model.learned)
        field = eqx.tree_at(lambda f: f.learned, model, library)
        trainable, frozen = eqx.partition(
            field,
            eqx.tree_at(
                lambda f: f.learned.coefficients,
                jax.tree.map(lambda _: False, field),
                True,
            ),
        )
        residuals = eqx.tree_at(lambda r: r.frozen, residuals, frozen)
        # The terms removed from the library are no longer quantities of the model.
        kept = np.asarray(library.support).ravel()
        names = tuple(n for n, k in zip(coefficient_names(library), kept) if k)
    else:
        kept = None
    flat, _ = jax.flatten_util.ravel_pytree(trainable)
    values, jacobian = map(np.asarray, _residuals_and_jacobian(residuals, trainable))
    if kept is None:
        names = tuple(f"p[{i}]" for i in range(flat.size))
    else:
        flat, jacobian = flat[kept], jacobian[:, kept]
    if not np.all(np.isfinite(values)):
        # A solve failed: there is no linearisation to speak of.
        nan = np.full(len(names), np.nan)
        return Uncertainty(names, np.asarray(flat), nan, nan, (), float("nan"))
    num_windows, size = residuals.windows.y1.shape
    # Each observation's noise enters two windows: as the end of one and the start
    # of the next. So the residuals are correlated, and the covariance of the
    # estimate is the sandwich (J^T J)^+ J^T A Σ A^T J (J^T J)^+, with A the
    # derivative of the residuals with respect to the observations.
    exposure = _noise_exposure(
        residuals, trainable, jacobian, num_windows // windows_per_trajectory
    )
    column_norms = np.linalg.norm(jacobian, axis=0)
    usable = column_norms > 0
    scaled = jacobian[:, usable] / column_norms[usable]
    _, singular, vt = np.linalg.svd(scaled, full_matrices=False)
    relative = singular / singular[0] if singular.size and singular[0] > 0 else singular
    identifiable = relative >= UNIDENTIFIABLE_RATIO
    # (J^T J)^+ on the identifiable directions.
    v = vt[identifiable].T / singular[identifiable]
    pseudo_inverse = (v @ v.T) / np.outer(column_norms[usable], column_norms[usable])
    if noise is None:
        # E|r|^2 = σ^2 (tr(A A^T) - tr(H A A^T)), H = J (J^T J)^+ J^T the part of
        # the noise that the fit absorbs.
        exposed = exposure.matrix[..., usable].reshape(-1, int(np.sum(usable)))
        absorbed = float(np.sum(pseudo_inverse * (exposed.T @ exposed)))
        dof = max(exposure.trace - absorbed, 1.0)
        sigma = np.full(size, np.sqrt(np.sum(values**2) / dof))
    else:
        sigma = np.broadcast_to(np.asarray(noise, dtype=float), (size,))
    sigma = np.maximum(sigma, resolution)
    exposed = exposure.matrix[..., usable] * sigma[None, None, :, None]
    spread = exposed.reshape(-1, int(np.sum(usable))) @ pseudo_inverse
    variance = np.full(len(names), np.inf)
    variance[usable] = np.sum(spread**2, axis=0)
    usable_names = [n for n, u in zip(names, usable) if u]
    directions = [
        tuple(usable_names[i] for i in np.flatnonzero(np.abs(row) > _INVOLVED))
        for row in vt[~identifiable]
    ]
    directions += [(n,) for n, u in zip(names, usable) if not u]
    for direction in directions:
        for name in direction:
            variance[names.index(name)] = np.inf
    return Uncertainty(
        names=names,
        values=np.asarray(flat),
        stderr=np.sqrt(variance),
        singular_values=relative,
        unidentifiable=tuple(directions),
        noise=float(np.max(sigma)),
    )
