import abc
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, TYPE_CHECKING

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Bool, Float, Inexact, Int, PyTree, Shaped

from .._custom_types import RealScalarLike
from .._interpolation import LocalPolynomialInterpolation
from .._root_finder import (
    AbstractNewtonMatrix,
    newton_matrix_worth_keeping,
    SimplifiedNewton,
)


if TYPE_CHECKING:
    from typing import ClassVar as AbstractClassVar, ClassVar as AbstractVar
else:
    from equinox import AbstractClassVar, AbstractVar


class LowPrecisionWarning(UserWarning):
    """Emitted when an implicit solver runs in less than double precision."""


class CollocationTableau(eqx.Module):
    """A stiffly accurate implicit Runge--Kutta method as data: its constants, and
    everything derived from them that a step of
    [`diffrax_implicit_node.AbstractCollocationSolver`][] needs.

    The first stage may be explicit (`c[0] == 0` and a zero first row of `a`, as for
    Lobatto IIIA methods such as the trapezoidal rule); every other stage is implicit.
    The implicit part of `a` must be invertible, so that its inverse can be
    diagonalised (the W-transformation of Butcher and of Hairer & Wanner IV.8): one
    Newton iteration then costs one LU factorisation of `λ I - h J` per real
    eigenvalue `λ` of the inverse and per complex-conjugate pair, instead of one of the
    whole stage system.

    The method need not be a collocation method (Lobatto IIIC is not); its dense output
    is the polynomial `u` with `u(t0) = y0` and `u'(t0 + cⱼ h) = f(Yⱼ)`, which is the
    collocation polynomial for a collocation method.
    """

    c: np.ndarray
    a: np.ndarray
    order: int
    error_filter_shift: float
    error_estimate: "AbstractErrorEstimate"
    # Derived.
    error_order: int
    # Weights of the embedded error estimate, where every stage is implicit.
    error_weights: np.ndarray | None
    explicit_first_stage: bool
    c_implicit: np.ndarray
    a_implicit: np.ndarray
    a_implicit_inv: np.ndarray
    a_explicit: np.ndarray
    transform: np.ndarray
    transform_inv: np.ndarray
    # For each implicit stage's transformed system: which linear system to solve, and
    # whether to conjugate its solution (conjugate eigenvalues share one solve).
    system_of_stage: tuple[int, ...]
    conjugate_stage: tuple[bool, ...]
    shifts: tuple[complex, ...]
    error_filter_system: int
    dense_coeffs: np.ndarray

    def __init__(
        self,
        *,
        c: np.ndarray,
        a: np.ndarray,
        order: int,
        error_filter_shift: float | None = None,
        error_estimate: "AbstractErrorEstimate | None" = None,
    ):
        """**Arguments:**

        - `c`: The nodes, increasing, with `c[-1] == 1` (stiffly accurate).
        - `a`: The Runge--Kutta matrix, with one row per node, whose last row is the
            weights `b`. Its first row may be zero if `c[0] == 0` (an explicit first
            stage); the rest of it must be invertible.
        - `order`: The classical order of the method.
        - `error_filter_shift`: `1 / γ₀`, where the error estimate is filtered through
            `(I - γ₀ hJ)⁻¹`. Defaults to the real eigenvalue of the inverse of the
            implicit part of `a`, whose Newton system the filter then reuses.
        - `error_estimate`: How a step estimates its local error. Defaults to the
            stiffly filtered embedded estimate of Hairer & Wanner (IV.8.19-20),
            generalised to `s` stages (of order `s`), which needs every stage
            implicit; the trapezoidal rule brings its own (see its source).
        """
        c, a = _checked_coefficients(c, a)
        self.c = c
        self.a = a
        self.order = order
        self.explicit_first_stage = bool(c[0] == 0 and np.all(a[0] == 0))
        first = 1 if self.explicit_first_stage else 0
        self.c_implicit = c[first:]
        self.a_explicit = a[first:, 0] if first else np.zeros(len(c))
        self.a_implicit = a[first:, first:]
        self.a_implicit_inv = np.linalg.inv(self.a_implicit)

        eigenvalues, vectors = _paired_eigen_decomposition(self.a_implicit_inv)
        if error_filter_shift is None:
            real = eigenvalues[eigenvalues.imag == 0].real
            if len(real) != 1:
                raise ValueError(
                    "The inverse of the implicit part of `a` has no single real "
                    "eigenvalue to filter the error estimate with; give "
                    "`error_filter_shift`."
                )
            error_filter_shift = float(real[0])
        if not error_filter_shift > 0:
            raise ValueError("`error_filter_shift` must be positive.")
        self.error_filter_shift = float(error_filter_shift)
        self.error_estimate = (
            EmbeddedErrorEstimate() if error_estimate is None else error_estimate
        )
        self.error_order = self.error_estimate.error_order(c, a)
        self.error_weights = (
            None
            if self.explicit_first_stage
            else embedded_error_weights(c, a, 1 / self.error_filter_shift)
        )

        shifts: list[complex] = []
        system_of_stage = []
        conjugate_stage = []
        for eigenvalue in eigenvalues:
            if eigenvalue.imag < 0:
                # Its conjugate partner came just before it.
                system_of_stage.append(len(shifts) - 1)
                conjugate_stage.append(True)
            else:
                shifts.append(complex(eigenvalue))
                system_of_stage.append(len(shifts) - 1)
                conjugate_stage.append(False)
        self.transform = vectors
        self.transform_inv = np.linalg.inv(vectors)
        self.system_of_stage = tuple(system_of_stage)
        self.conjugate_stage = tuple(conjugate_stage)
        # Reuse a Newton system for the error filter where the shift is the same.
        matching = [
            i
            for i, shift in enumerate(shifts)
            if abs(shift - error_filter_shift) <= 1e-12 * abs(error_filter_shift)
        ]
        if not matching:
            shifts.append(complex(error_filter_shift))
            matching = [len(shifts) - 1]
        self.error_filter_system = matching[0]
        self.shifts = tuple(shifts)

        # u(t0 + θh) = y0 + Σⱼ hf(Yⱼ) ∫₀^θ Lⱼ, with Lⱼ the Lagrange basis on the nodes
        # c; row j holds the coefficients of θ, θ², ...
        stages = len(c)
        dense_coeffs = np.empty((stages, stages))
        for j in range(stages):
            others = np.delete(c, j)
            basis = np.poly1d(np.poly(others)) / np.prod(c[j] - others)
            dense_coeffs[j] = basis.integ().coeffs[::-1][1:]
        self.dense_coeffs = dense_coeffs

    def estimate_error(self, step: "CollocationStep") -> Inexact[Array, " n"]:
        """The local error estimate of a step, as a flat array."""
        return self.error_estimate(self, step)


def _checked_coefficients(
    c: np.ndarray, a: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`c` and `a` as float64 arrays, or a `ValueError` that names what is wrong."""
    c = np.asarray(c, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    if c.ndim != 1 or len(c) == 0:
        raise ValueError(f"`c` must be a non-empty vector, not of shape {c.shape}.")
    if a.shape != (len(c), len(c)):
        raise ValueError(
            f"`a` must be square, with one row per node in `c`: expected shape "
            f"{(len(c), len(c))}, got {a.shape}."
        )
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(a))):
        raise ValueError("`c` and `a` must be finite.")
    if np.any(np.diff(c) <= 0):
        raise ValueError("The nodes `c` must be distinct and increasing.")
    if c[-1] != 1:
        raise ValueError("A stiffly accurate method needs `c[-1] == 1`.")
    if not np.allclose(a.sum(axis=1), c, rtol=0, atol=1e-13):
        raise ValueError("The row sums of `a` must equal `c`.")
    explicit_first_stage = c[0] == 0 and np.all(a[0] == 0)
    implicit = a[1:, 1:] if explicit_first_stage else a
    if np.linalg.cond(implicit) > 1e12:
        raise ValueError(
            "The implicit part of `a` (all of it, or all but the first row and column "
            "for an explicit first stage) must be invertible."
        )
    return c, a


def _paired_eigen_decomposition(
    matrix: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of a real matrix with distinct eigenvalues: real
    eigenvalues with real eigenvectors, and each complex eigenvalue with positive
    imaginary part followed by its conjugate, whose eigenvector is the conjugate of its
    partner's (so that conjugate stages can share one linear solve)."""
    eigenvalues, vectors = np.linalg.eig(matrix)
    scale = np.max(np.abs(eigenvalues))
    pairs: list[tuple[complex, np.ndarray]] = []
    for eigenvalue, vector in zip(eigenvalues, vectors.T):
        if abs(eigenvalue.imag) <= 1e-12 * scale:
            pairs.append((complex(eigenvalue.real), np.real(vector).astype(complex)))
        elif eigenvalue.imag > 0:
            pairs.append((complex(eigenvalue), vector.astype(complex)))
            pairs.append((complex(eigenvalue).conjugate(), vector.conj()))
    return (
        np.array([eigenvalue for eigenvalue, _ in pairs]),
        np.stack([vector for _, vector in pairs], axis=1),
    )


def embedded_error_weights(c: np.ndarray, a: np.ndarray, gamma0: float) -> np.ndarray:
    """Weights `w` of the embedded error estimate of Hairer & Wanner (IV.8.19-20),

    `err = (I - γ₀ h J)⁻¹ (γ₀ h f(t0, y0) + Σᵢ wᵢ Zᵢ)`,

    for a collocation method with invertible `a` and `c[-1] == 1`. The estimate compares
    the step with an embedded method of order `s` (the number of stages) that also uses
    `f(t0, y0)` and, implicitly, `f(t1, ŷ1)`, both with weight `γ₀`; linearising the
    latter around `y1` gives the matrix `I - γ₀ h J`.
    """
    stages = len(c)
    vandermonde = np.vander(c, stages, increasing=True).T
    # The embedded quadrature must integrate θ^(k-1) exactly, k = 1, ..., s.
    quadrature_defect = np.full(stages, -gamma0)
    quadrature_defect[0] -= gamma0
    weight_difference = np.linalg.solve(vandermonde, quadrature_defect)
    a_inv = np.linalg.inv(a)
    return a_inv.T @ weight_difference + gamma0 * a_inv[-1]


class _LUFactorisation(eqx.Module):
    """`P M = L U`, factorised by LAPACK and solved by substitution in plain JAX.

    XLA:CPU (jaxlib 0.10-0.11) runs a batched LAPACK call over a large batch (e.g. a
    `vmap` over a thousand training windows) by splitting it over its thread pool
    and blocking the calling pool thread until the pieces finish. Two such calls that
    run at the same time can block every thread of the pool, and the program hangs.
    So the triangular solves, which run in every Newton iteration, stay out of
    LAPACK, and `factorise_in_sequence` orders the factorisations of one step.
    """

    lu: Shaped[Array, "n n"]  # L below the diagonal (unit diagonal), U on and above
    permutation: Int[Array, " n"]  # (P M)[i] = M[permutation[i]]

    def solve(self, vector: Shaped[Array, " n"], transpose: bool = False) -> Array:
        """Solves `M x = vector`, or `Mᵀ x = vector` with `transpose=True`."""
        if transpose:
            # Mᵀ = Uᵀ Lᵀ P: solve with Uᵀ (lower), then with Lᵀ (upper, unit).
            lower = _substitute(self.lu.T, vector, lower=True, unit_diagonal=False)
            upper = _substitute(self.lu.T, lower, lower=False, unit_diagonal=True)
            return jnp.zeros_like(upper).at[self.permutation].set(upper)
        permuted = vector[self.permutation]
        lower = _substitute(self.lu, permuted, lower=True, unit_diagonal=True)
        return _substitute(self.lu, lower, lower=False, unit_diagonal=False)


def _factorise(matrix: Shaped[Array, "n n"]) -> _LUFactorisation:
    lu, _, permutation = lax.linalg.lu(matrix)
    return _LUFactorisation(lu, permutation)


def factorise_in_sequence(
    matrices: tuple[Shaped[Array, "n n"], ...],
) -> tuple[_LUFactorisation, ...]:
    """LU-factorises `matrices`, each only once the previous one is done.

    Each matrix gets an exact zero added that XLA cannot see through (derived from
    the previous factorisation's permutation, whose entries are never negative):
    the data dependency keeps XLA from running two LAPACK calls at the same time.
    (`lax.optimization_barrier` does not order operations on XLA:CPU.)
    """
    factorisations: list[_LUFactorisation] = []
    for matrix in matrices:
        if factorisations:
            previous = factorisations[-1].permutation[0]
            matrix = matrix + jnp.minimum(previous, 0).astype(matrix.dtype)
        factorisations.append(_factorise(matrix))
    return tuple(factorisations)


def _substitute(
    triangle: Shaped[Array, "n n"],
    vector: Shaped[Array, " n"],
    *,
    lower: bool,
    unit_diagonal: bool,
) -> Shaped[Array, " n"]:
    """Solves `triangle x = vector` by forward (`lower`) or back substitution,
    reading only the lower or upper triangle of `triangle`."""
    size = vector.shape[0]
    columns = jnp.arange(size)

    def substitute_row(k, solution):
        row = k if lower else size - 1 - k
        known = (columns < row) if lower else (columns > row)
        value = vector[row] - jnp.where(known, triangle[row], 0) @ solution
        if not unit_diagonal:
            value = value / triangle[row, row]
        return solution.at[row].set(value)

    return lax.fori_loop(0, size, substitute_row, jnp.zeros_like(vector))


class _EigenSystems(NamedTuple):
    """Which `n × n` systems `(λ I - hJ) x = b` a Newton iteration solves: one per
    entry of `shifts`; stage `k` of the transformed system solves
    `system_of_stage[k]`, conjugating the solution where `conjugate_stage[k]`."""

    shifts: tuple[complex, ...]
    system_of_stage: tuple[int, ...]
    conjugate_stage: tuple[bool, ...]
    error_filter_system: int


def _eigen_systems(tableau: CollocationTableau, complex_state: bool) -> _EigenSystems:
    """For a real state, the tableau's: a complex-conjugate pair of eigenvalues has
    conjugate right-hand sides, hence conjugate solutions, and shares one solve. For
    a complex state it does not: one system per eigenvalue."""
    if not complex_state:
        return _EigenSystems(
            tableau.shifts,
            tableau.system_of_stage,
            tableau.conjugate_stage,
            tableau.error_filter_system,
        )
    eigenvalues = [
        tableau.shifts[system].conjugate() if conjugate else tableau.shifts[system]
        for system, conjugate in zip(tableau.system_of_stage, tableau.conjugate_stage)
    ]
    error_filter = [
        stage
        for stage, (system, conjugate) in enumerate(
            zip(tableau.system_of_stage, tableau.conjugate_stage)
        )
        if system == tableau.error_filter_system and not conjugate
    ]
    if not error_filter:
        eigenvalues.append(tableau.shifts[tableau.error_filter_system])
        error_filter = [len(eigenvalues) - 1]
    stages = len(tableau.system_of_stage)
    return _EigenSystems(
        tuple(eigenvalues), tuple(range(stages)), (False,) * stages, error_filter[0]
    )


class _CollocationNewtonMatrix(AbstractNewtonMatrix):
    """`I - (A ⊗ hJ)` for the implicit stages, factorised through the eigenvalues of
    `A⁻¹`: `(A⁻¹ ⊗ I - I ⊗ hJ) = (T ⊗ I)(Λ ⊗ I - I ⊗ hJ)(T⁻¹ ⊗ I) `.
    """

    factorisations: tuple[_LUFactorisation, ...]
    to_eigenbasis: Array  # T⁻¹ A⁻¹
    from_eigenbasis: Array  # T
    system_of_stage: tuple[int, ...] = eqx.field(static=True)
    conjugate_stage: tuple[bool, ...] = eqx.field(static=True)
    error_filter_shift: float = eqx.field(static=True)
    error_filter_system: int = eqx.field(static=True)

    def __init__(self, tableau: CollocationTableau, hjac: Inexact[Array, "n n"]):
        complex_dtype = _complex_dtype(hjac.dtype)
        systems = _eigen_systems(
            tableau, jnp.issubdtype(hjac.dtype, jnp.complexfloating)
        )
        # (Real for a real shift and a real state.)
        identity = jnp.eye(hjac.shape[0], dtype=hjac.dtype)
        matrices = []
        for shift in systems.shifts:
            if shift.imag == 0:
                matrix = shift.real * identity - hjac
            else:
                matrix = shift * identity.astype(complex_dtype) - hjac.astype(
                    complex_dtype
                )
            matrices.append(matrix)
        self.factorisations = factorise_in_sequence(tuple(matrices))
        self.to_eigenbasis = jnp.asarray(
            tableau.transform_inv @ tableau.a_implicit_inv, dtype=complex_dtype
        )
        self.from_eigenbasis = jnp.asarray(tableau.transform, dtype=complex_dtype)
        self.system_of_stage = systems.system_of_stage
        self.conjugate_stage = systems.conjugate_stage
        self.error_filter_shift = tableau.error_filter_shift
        self.error_filter_system = systems.error_filter_system

    def solve_shifted(self, system: int, vector: Array) -> Array:
        """Solves `(shifts[system] I - hJ) x = vector`."""
        factorisation = self.factorisations[system]
        if not jnp.issubdtype(factorisation.lu.dtype, jnp.complexfloating):
            # A real shift: the transformed right-hand side is real up to round-off.
            vector = jnp.real(vector)
        return factorisation.solve(vector.astype(factorisation.lu.dtype))

    def solve(self, residual: Inexact[Array, "m n"]) -> tuple[Array, optx.RESULTS]:
        transformed = self.to_eigenbasis @ residual.astype(self.to_eigenbasis.dtype)
        solved = {}
        for k, (system, conjugate) in enumerate(
            zip(self.system_of_stage, self.conjugate_stage)
        ):
            if not conjugate:
                value = self.solve_shifted(system, transformed[k])
                solved[system] = value.astype(transformed.dtype)
        # Conjugate eigenvalues have conjugate right-hand sides, hence solutions.
        pieces = [
            solved[system].conj() if conjugate else solved[system]
            for system, conjugate in zip(self.system_of_stage, self.conjugate_stage)
        ]
        increments = self.from_eigenbasis @ jnp.stack(pieces)
        # A singular Newton matrix shows as non-finite increments, which the root
        # finder reports as a failure.
        return _like(increments, residual), optx.RESULTS.successful

    def solve_error_filter(self, vector: Array) -> Array:
        """Applies `(I - γ₀ hJ)⁻¹`, with `γ₀ = 1 / error_filter_shift`."""
        value = self.solve_shifted(
            self.error_filter_system, self.error_filter_shift * vector
        )
        return _like(value, vector)


def _without_tangents(tree: PyTree) -> PyTree:
    """`lax.stop_gradient` on the floating-point arrays of a pytree that may also hold
    functions and other non-arrays."""
    differentiable, static = eqx.partition(tree, eqx.is_inexact_array)
    return eqx.combine(lax.stop_gradient(differentiable), static)


def _zeros_shaped_like_output(fn: Callable, *args: Any) -> PyTree:
    """What `fn(*args)` would return, without computing it: its arrays as zeros, its
    other leaves as they are."""
    return jax.tree.map(
        lambda leaf: (
            jnp.zeros(leaf.shape, leaf.dtype)
            if isinstance(leaf, jax.ShapeDtypeStruct)
            else leaf
        ),
        eqx.filter_eval_shape(fn, *args),
    )


def _complex_dtype(dtype) -> jnp.dtype:
    """The complex dtype with the precision of the real `dtype`. (Explicitly: strict
    dtype promotion has no path from a real to a complex dtype.)"""
    return jnp.dtype(jnp.complex128 if jnp.finfo(dtype).bits == 64 else jnp.complex64)


def _like(value: Inexact[Array, "*shape"], like: Inexact[Array, "*shape"]) -> Array:
    """`value` in the dtype of `like`, dropping the imaginary part (round-off) where
    `like` is real."""
    if not jnp.issubdtype(like.dtype, jnp.complexfloating):
        value = jnp.real(value)
    return value.astype(like.dtype)


class _StageJacobianLU(lx.AbstractLinearSolver):
    """LU factorisation of the exact Jacobian of the stage residual
    `Z - (A ⊗ I) g(Z) - const`, in which block `i` of `g` depends on `Zᵢ` alone.

    The implicit-function-theorem gradient of a step needs this `mn × mn` Jacobian
    (`m` implicit stages, `n` states). Built column by column it costs `mn`
    Jacobian-vector products of the residual, each evaluating `f` at all `m` stages.
    Perturbing every stage by the same unit vector `eₖ` instead gives
    `eₖ - (A ⊗ I)[h Jⱼ eₖ]ⱼ`, from which `A⁻¹` recovers column `k` of every stage
    Jacobian `h Jⱼ` at once: `n` products in all, with nothing approximated.
    (Solved like the Newton matrices: see `_LUFactorisation`.)
    """

    # Static, hence hashable: the implicit part of the tableau's `a`, row by row.
    a_implicit: tuple[tuple[float, ...], ...] = eqx.field(static=True)

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        structure = operator.in_structure()
        stages, size = structure.shape
        dtype = structure.dtype
        basis = jnp.eye(size, dtype=dtype)
        # images[k, j] = eₖ - Σᵢ a_ji h Jᵢ eₖ
        images = jax.vmap(lambda e: operator.mv(jnp.broadcast_to(e, (stages, size))))(
            basis
        )
        a_implicit = np.array(self.a_implicit)
        a_inv = jnp.asarray(np.linalg.inv(a_implicit), dtype=dtype)
        # stage_jacobians[j, p, k] = (h Jⱼ)[p, k]
        stage_jacobians = jnp.einsum("ji,kip->jpk", a_inv, basis[:, None, :] - images)
        matrix = jnp.eye(stages * size, dtype=dtype) - jnp.einsum(
            "ij,jpq->ipjq", jnp.asarray(a_implicit, dtype=dtype), stage_jacobians
        ).reshape(stages * size, stages * size)
        return _factorise(matrix), eqxi.Static(False)

    def compute(self, state, vector: Array, options: dict[str, Any]):
        del options
        factorisation, transpose = state
        solution = factorisation.solve(vector.reshape(-1), transpose=transpose.value)
        # Only a step whose Newton iteration failed (singular or non-finite Newton
        # matrix) gets here a non-finite solution. Such a step has no derivative, and
        # its result already reports the failure: give it a zero tangent. Optimistix
        # would throw on a non-finite one, aborting a whole batch of solves, or a
        # least-squares optimiser that merely tried a bad step.
        solution = jnp.where(jnp.all(jnp.isfinite(solution)), solution, 0)
        return solution.reshape(vector.shape), lx.RESULTS.successful, {}

    def transpose(self, state, options: dict[str, Any]):
        factorisation, transpose = state
        return (factorisation, eqxi.Static(not transpose.value)), options

    def conj(self, state, options: dict[str, Any]):
        factorisation, transpose = state
        lu, permutation = factorisation.lu.conj(), factorisation.permutation
        return (_LUFactorisation(lu, permutation), transpose), options

    def assume_full_rank(self) -> bool:
        return True


class _AtRoot(optx.AbstractRootFinder):
    """Takes its starting point as the root, without iterating: `optx.root_find` with
    it and an `ImplicitAdjoint` attaches the implicit-function-theorem derivative to
    stages found elsewhere, without tangents. However many Newton solves a step tried
    (a reused Jacobian, then a fresh one), its derivative is then one linear solve,
    and the backward pass (or a checkpointed adjoint's recomputation) holds no
    residuals of the attempts."""

    rtol: float = 0.0
    atol: float = 0.0
    norm: Callable[[PyTree], Array] = optx.rms_norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del fn, y, args, options, f_struct, aux_struct, tags
        return None

    def step(self, fn, y, args, options, state, tags):
        del fn, args, options, tags
        return y, state, None

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, options, state, tags
        return jnp.array(True), optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, state, tags, result
        return y, aux, {}


class CollocationStep(NamedTuple):
    """What one step of a collocation solver computed, for its error estimate."""

    t0: RealScalarLike
    t1: RealScalarLike
    hf: Callable[[RealScalarLike, Array], Array]  # (t, y) -> h f(t, y), flat arrays
    y0: Inexact[Array, " n"]
    stages: Inexact[Array, "m n"]  # Zᵢ = Yᵢ - y0, implicit stages only
    stage_derivatives: Inexact[Array, "s n"]  # h f(Yᵢ), all stages
    dense_coeffs: Inexact[Array, "s n"]
    hf0: Inexact[Array, " n"]
    newton_matrix: _CollocationNewtonMatrix


class AbstractErrorEstimate(eqx.Module):
    """How a collocation method estimates the local error of a step. Estimates are
    filtered through `(I - γ₀ hJ)⁻¹`, `γ₀ = 1 / tableau.error_filter_shift`, so that
    stiff components in equilibrium do not force small steps."""

    @abc.abstractmethod
    def error_order(self, c: np.ndarray, a: np.ndarray) -> int:
        """Diffrax's `error_order` of the estimate for the method `c`, `a`; raises a
        `ValueError` where the estimate does not apply to that method."""

    @abc.abstractmethod
    def __call__(
        self, tableau: CollocationTableau, step: CollocationStep
    ) -> Inexact[Array, " n"]:
        """The local error estimate of `step`, as a flat array."""


class EmbeddedErrorEstimate(AbstractErrorEstimate):
    """Hairer & Wanner's stiffly filtered embedded estimate (IV.8.19-20), filtered
    twice, for a method whose stages are all implicit; with `s` stages it is of order
    `s` (error order `s + 1`).

    The first filtering alone tends to `-y0` in the very stiff limit, which would
    reject perfectly good steps; evaluating `f` once more at `y0 + err` (the "second
    filtering", which Hairer & Wanner apply after rejections) removes that. Doing it
    on every step costs one evaluation of `f` and keeps the step free of branches,
    which under `vmap` would cost both sides anyway.
    """

    def error_order(self, c: np.ndarray, a: np.ndarray) -> int:
        if c[0] == 0 and np.all(a[0] == 0):
            raise ValueError(
                "The embedded error estimate needs every stage implicit; a method "
                "with an explicit first stage needs an `error_estimate` of its own."
            )
        return len(c) + 1

    def __call__(
        self, tableau: CollocationTableau, step: CollocationStep
    ) -> Inexact[Array, " n"]:
        assert tableau.error_weights is not None
        gamma0 = 1 / tableau.error_filter_shift
        filter_error = step.newton_matrix.solve_error_filter
        with jax.numpy_dtype_promotion("standard"):
            weights = jnp.asarray(tableau.error_weights, dtype=step.y0.dtype)
            stage_part = weights @ step.stages
            error = filter_error(gamma0 * step.hf0 + stage_part)
            hf_perturbed = step.hf(step.t0, step.y0 + error)
            return filter_error(gamma0 * hf_perturbed + stage_part)


class _CollocationState(eqx.Module):
    """What an accepted step hands to the next one. (Diffrax keeps the previous state
    when it rejects a step, so a retry starts from the same state.)"""

    # The previous step's size (0 before the first step) and collocation polynomial.
    previous_dt: Float[Array, ""]
    dense_coeffs: Inexact[Array, "stages n"]
    # `h J` for `h = jacobian_dt` (0 for none), and the Newton matrix factorised from
    # it.
    jacobian_dt: Float[Array, ""]
    hjac: Inexact[Array, "n n"]
    newton_matrix: _CollocationNewtonMatrix
    # Whether Newton's method converged so fast with `hjac` that the next step may
    # keep it instead of evaluating a new Jacobian.
    jacobian_current: Bool[Array, ""]


class _StageEquations(NamedTuple):
    """The stage equations of one step, and how to solve them."""

    # (t, y, terms, t0, t1, args) -> h f(t, y), flat arrays.
    hf: Callable[..., Array]
    hf0: Inexact[Array, " n"]
    # (terms, t0, t1, y0, args, hf0), with and without tangents.
    residual_args: tuple
    frozen_args: tuple
    residual: Callable[[Array, tuple], Array]
    fresh_hjac: Callable[[], Array]
    # (Newton matrix, starting stages) -> solution, without tangents.
    solve: Callable[[Any, Array], optx.Solution]


class AbstractCollocationSolver(
    diffrax.AbstractImplicitSolver[_CollocationState], diffrax.AbstractAdaptiveSolver
):
    """Base class for the fully implicit, stiffly accurate collocation methods of this
    package.

    Each step solves the stage equations in increment form `Zᵢ = Yᵢ - y0`
    (Hairer & Wanner IV.8),

    `Zᵢ = Σⱼ aᵢⱼ h f(t0 + cⱼ h, y0 + Zⱼ)`,

    with an Optimistix root finder, and returns `y1 = y0 + Zₛ`. With the default
    [`diffrax_implicit_node.SimplifiedNewton`][] the Jacobian of `f` is evaluated at
    most once per step, and kept for later steps while Newton's method converges fast
    with it; the Newton system is W-transformed into one `n × n` system per real
    eigenvalue and per complex-conjugate pair of eigenvalues of `A⁻¹`. Gradients come
    from the implicit function theorem at the converged stages (Optimistix's
    `ImplicitAdjoint`), never from differentiating through the iterations. Dense output
    is the collocation polynomial of each step. Later steps start Newton from the
    previous step's collocation polynomial; the first from `Z = 0`. With Jacobian
    reuse, `init` already evaluates the first step's Jacobian and factorises its
    Newton matrix, which the first step then reuses (so that a checkpointed adjoint,
    which recomputes the steps but not `init`, does not recompute them).

    The state may be complex, for a vector field that is holomorphic in it (the
    Newton matrices use its complex Jacobian, as Diffrax's implicit solvers do); the
    W-transformed system then has one complex `n × n` system per eigenvalue of `A⁻¹`.

    Subclasses provide the method as data: a
    [`diffrax_implicit_node.CollocationTableau`][] as the class variable `tableau`,
    and the fields `root_finder`, `root_find_max_steps` and `reuse_jacobian`.
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., LocalPolynomialInterpolation]] = (
        LocalPolynomialInterpolation
    )

    tableau: AbstractClassVar[CollocationTableau]
    root_finder: AbstractVar[optx.AbstractRootFinder]
    root_find_max_steps: AbstractVar[int]
    reuse_jacobian: AbstractVar[bool]

    def order(self, terms: PyTree[diffrax.AbstractTerm]) -> int:
        del terms
        return self.tableau.order

    def error_order(self, terms: PyTree[diffrax.AbstractTerm]) -> int:
        del terms
        return self.tableau.error_order

    def init(
        self,
        terms: diffrax.AbstractTerm,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: PyTree[Array],
        args: PyTree,
    ) -> _CollocationState:
        state = self._unprepared_state(t0, t1, y0)
        if not self._reuses_newton_matrix():
            # Placeholders: every step evaluates a Jacobian and factorises.
            return state
        return self._prepare_first_step(terms, t0, t1, y0, args, state)

    def _unprepared_state(
        self, t0: RealScalarLike, t1: RealScalarLike, y0: PyTree[Array]
    ) -> _CollocationState:
        """The state before any step, its Newton matrix a placeholder (not current)."""
        y0_flat, _ = ravel_pytree(y0)
        if jnp.finfo(y0_flat.dtype).bits < 64:
            warnings.warn(
                f"{type(self).__name__} is solving in {y0_flat.dtype}. Stiff problems "
                "usually need float64: Newton's method and the error estimate lose "
                "most of their digits to the stiffness. Enable it with "
                '`jax.config.update("jax_enable_x64", True)` and a float64 (or, for a '
                "complex state, complex128) `y0`.",
                LowPrecisionWarning,
                stacklevel=3,
            )
        stages = len(self.tableau.c)
        dt = jnp.zeros((), dtype=jnp.result_type(t0, t1))
        # Otherwise the first sign of trouble would be a Newton "divergence".
        dt = eqx.error_if(
            dt,
            jnp.invert(jnp.all(jnp.isfinite(y0_flat))),
            "`y0` contains non-finite values (NaN or infinity).",
        )
        size = y0_flat.shape[0]
        state = _CollocationState(
            previous_dt=dt,
            dense_coeffs=jnp.zeros((stages, size), dtype=y0_flat.dtype),
            jacobian_dt=dt,
            hjac=jnp.zeros((size, size), dtype=y0_flat.dtype),
            newton_matrix=self._placeholder_newton_matrix(size, y0_flat.dtype),
            jacobian_current=jnp.array(False),
        )
        return state

    def _prepare_first_step(
        self,
        terms: diffrax.AbstractTerm,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: PyTree[Array],
        args: PyTree,
        state: _CollocationState,
    ) -> _CollocationState:
        y0_flat, unravel = ravel_pytree(y0)
        # Prepare the first step's Jacobian and Newton matrix. Outside `diffeqsolve`'s
        # loop, and without tangents, this work is not repeated by a checkpointed
        # adjoint's recomputation of the step (for a single step per solve, training on
        # short windows, most of the step). Not its Newton iteration: a second copy of
        # it would make the solver's compile time half as long again.
        with jax.numpy_dtype_promotion("standard"):
            first_dt = jnp.asarray(t1 - t0, dtype=state.previous_dt.dtype)
        equations = self._stage_equations(terms, t0, t1, y0_flat, unravel, args)
        hjac = equations.fresh_hjac()
        return eqx.tree_at(
            lambda s: (s.jacobian_dt, s.hjac, s.newton_matrix, s.jacobian_current),
            state,
            (
                first_dt,
                hjac,
                _CollocationNewtonMatrix(self.tableau, hjac),
                jnp.array(True),
            ),
        )

    def _reuses_newton_matrix(self) -> bool:
        return self.reuse_jacobian and isinstance(self.root_finder, SimplifiedNewton)

    def _placeholder_newton_matrix(self, size: int, dtype) -> _CollocationNewtonMatrix:
        """A Newton matrix of the right structure, all zeros, without factorising."""
        return _zeros_shaped_like_output(
            lambda hjac: _CollocationNewtonMatrix(self.tableau, hjac),
            jax.ShapeDtypeStruct((size, size), dtype),
        )

    def step(
        self,
        terms: diffrax.AbstractTerm,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: PyTree[Array],
        args: PyTree,
        solver_state: _CollocationState,
        made_jump: Bool[ArrayLike, ""],
    ) -> tuple[
        PyTree[Array], PyTree[Array], dict[str, PyTree[Array]], _CollocationState, Any
    ]:
        y1, error, dense_info, new_state, result, _ = self.step_and_stage_solution(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        return y1, error, dense_info, new_state, result

    def step_and_stage_solution(
        self,
        terms: diffrax.AbstractTerm,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: PyTree[Array],
        args: PyTree,
        solver_state: _CollocationState,
        made_jump: Bool[ArrayLike, ""],
    ) -> tuple[
        PyTree[Array],
        PyTree[Array],
        dict[str, PyTree[Array]],
        _CollocationState,
        Any,
        optx.Solution,
    ]:
        """`step`, and also the root finder's solution of the stage equations (whose
        statistics, e.g. how fast Newton's method converged, steer
        [`diffrax_implicit_node.AdaptiveRadau`][]'s choice of order)."""
        tableau = self.tableau
        # Nothing the state holds (Jacobians, Newton matrices, starting guesses) is
        # differentiated: a checkpointed adjoint, which differentiates the whole loop
        # state, would otherwise differentiate every branch that reads it.
        solver_state = _without_tangents(solver_state)
        y0_flat, unravel = ravel_pytree(y0)
        dtype = y0_flat.dtype
        with jax.numpy_dtype_promotion("standard"):
            dt = jnp.asarray(t1 - t0, dtype=solver_state.previous_dt.dtype)
        equations = self._stage_equations(terms, t0, t1, y0_flat, unravel, args)
        hf, hf0 = equations.hf, equations.hf0
        starting_stages = self._starting_stages(t0, t1, solver_state, made_jump)

        if self._reuses_newton_matrix():
            hjac, newton_matrix, solution = self._solve_with_reuse(
                solver_state, dt, made_jump, equations, starting_stages
            )
            jacobian_current = newton_matrix_worth_keeping(solution)
        else:
            # (Other root finders bring their own Jacobians, and the Newton matrix
            # serves only the error estimate.)
            hjac = equations.fresh_hjac()
            newton_matrix = _CollocationNewtonMatrix(tableau, hjac)
            solution = equations.solve(newton_matrix, starting_stages)
            jacobian_current = jnp.array(False)
        stages = optx.root_find(
            equations.residual,
            _AtRoot(),
            solution.value,
            equations.residual_args,
            throw=False,
            adjoint=optx.ImplicitAdjoint(
                linear_solver=_StageJacobianLU(
                    tuple(map(tuple, tableau.a_implicit.tolist()))
                )
            ),
        ).value
        a_explicit = jnp.asarray(tableau.a_explicit, dtype=dtype)
        # hf(Yᵢ) = A⁻¹ Z: exact for the collocation polynomial, and no extra evaluation.
        with jax.numpy_dtype_promotion("standard"):
            implicit_derivatives = jnp.asarray(tableau.a_implicit_inv, dtype=dtype) @ (
                stages - jnp.outer(a_explicit, hf0)
            )
        if tableau.explicit_first_stage:
            stage_derivatives = jnp.concatenate([hf0[None], implicit_derivatives])
        else:
            stage_derivatives = implicit_derivatives
        dense_coeffs = jnp.asarray(tableau.dense_coeffs.T, dtype=dtype) @ (
            stage_derivatives
        )
        y1_flat = y0_flat + stages[-1]
        error = tableau.estimate_error(
            CollocationStep(
                t0=t0,
                t1=t1,
                hf=lambda t, y: hf(t, y, terms, t0, t1, args),
                y0=y0_flat,
                stages=stages,
                stage_derivatives=stage_derivatives,
                dense_coeffs=dense_coeffs,
                hf0=hf0,
                newton_matrix=newton_matrix,
            )
        )
        result = diffrax.RESULTS.promote(solution.result)
        # An infinite error makes an adaptive controller reject the step and retry
        # with a smaller one; with constant steps `diffeqsolve` reports `result`.
        error = jnp.where(result == diffrax.RESULTS.successful, error, jnp.inf)
        dense_info = dict(y0=y0, coeffs=jax.vmap(unravel)(dense_coeffs))
        new_state = _CollocationState(
            previous_dt=dt,
            dense_coeffs=dense_coeffs,
            jacobian_dt=dt,
            hjac=hjac,
            newton_matrix=newton_matrix,
            jacobian_current=jacobian_current,
        )
        return unravel(y1_flat), unravel(error), dense_info, new_state, result, solution

    def _stage_equations(
        self,
        terms: diffrax.AbstractTerm,
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0_flat: Inexact[Array, " n"],
        unravel: Callable[[Array], PyTree[Array]],
        args: PyTree,
    ) -> _StageEquations:
        tableau = self.tableau
        dtype = y0_flat.dtype

        def hf(t, y_flat, terms, t0, t1, args):
            control = terms.contr(t0, t1)
            out = terms.vf_prod(t, unravel(y_flat), args, control)
            out_flat, _ = ravel_pytree(out)
            return out_flat.astype(dtype)

        hf0 = hf(t0, y0_flat, terms, t0, t1, args)
        residual_args = (terms, t0, t1, y0_flat, args, hf0)
        # The Newton solves see no tangents; the step attaches the derivative at the
        # root (`_AtRoot`).
        frozen_args = _without_tangents(residual_args)

        def fresh_hjac():
            terms, t0, t1, y0_flat, args, _ = frozen_args
            # A complex state needs a vector field that is holomorphic in it (as
            # Diffrax's implicit solvers assume): `J` is its complex derivative.
            return jax.jacfwd(
                lambda y: hf(t0, y, terms, t0, t1, args),
                holomorphic=jnp.issubdtype(dtype, jnp.complexfloating),
            )(y0_flat)

        c_implicit = jnp.asarray(tableau.c_implicit)
        a_implicit = jnp.asarray(tableau.a_implicit, dtype=dtype)
        a_explicit = jnp.asarray(tableau.a_explicit, dtype=dtype)

        def residual(stages, residual_args):
            terms, t0, t1, y0_flat, args, hf0 = residual_args
            with jax.numpy_dtype_promotion("standard"):
                stage_times = t0 + c_implicit * (t1 - t0)
            derivatives = jax.vmap(
                lambda t, z: hf(t, y0_flat + z, terms, t0, t1, args)
            )(stage_times, stages)
            return stages - a_implicit @ derivatives - jnp.outer(a_explicit, hf0)

        def solve(newton_matrix, starting_stages) -> optx.Solution:
            options: dict[str, Any] = dict(max_steps=self.root_find_max_steps)
            if isinstance(self.root_finder, SimplifiedNewton):
                options.update(
                    newton_matrix=newton_matrix,
                    scale_reference=jnp.broadcast_to(
                        y0_flat, (len(c_implicit),) + y0_flat.shape
                    ),
                )
            return optx.root_find(
                residual,
                self.root_finder,
                starting_stages,
                frozen_args,
                options=options,
                max_steps=self.root_find_max_steps,
                throw=False,
            )

        return _StageEquations(
            hf=hf,
            hf0=hf0,
            residual_args=residual_args,
            frozen_args=frozen_args,
            residual=residual,
            fresh_hjac=fresh_hjac,
            solve=solve,
        )

    def _solve_with_reuse(
        self,
        state: _CollocationState,
        dt: Float[Array, ""],
        made_jump: Bool[ArrayLike, ""],
        equations: _StageEquations,
        starting_stages: Inexact[Array, "m n"],
    ) -> tuple[Array, _CollocationNewtonMatrix, optx.Solution]:
        """Solves the stage equations with the previous step's Jacobian where Newton's
        method converged fast with it (as Hairer & Wanner's RADAU5 and SciPy's `Radau`
        do): with its factorised Newton matrix as it is if the step size is unchanged
        (as a [`diffrax_implicit_node.PredictiveController`][] often keeps it), else
        rescaled to the new step size and factorised anew. Should Newton's method then
        fail, the step is retried at once with a fresh Jacobian, rather than rejected.

        Under `vmap`, a conditional whose predicate differs between batch elements
        evaluates both branches; so the batch shares each decision, and takes a fresh
        Jacobian (or factorisation) where any of its elements needs one.
        """
        keep = (
            state.jacobian_current
            & (state.jacobian_dt != 0)
            & jnp.invert(jnp.asarray(made_jump))
        )
        # Up to the round-off of `t1 - t0` in the step-size controller.
        same_dt = jnp.abs(dt - state.jacobian_dt) <= 1e-10 * jnp.abs(dt)
        # (Nothing in the loop is differentiated: a while loop cannot be.)
        dt = lax.stop_gradient(dt)
        safe_jacobian_dt = jnp.where(state.jacobian_dt != 0, state.jacobian_dt, 1)

        class Attempt(NamedTuple):
            pending: Bool[Array, ""]  # Whether to (re)solve.
            refresh: Bool[Array, ""]
            refactorise: Bool[Array, ""]
            hjac: Array
            newton_matrix: _CollocationNewtonMatrix
            solution: optx.Solution

        def factorise(attempt: Attempt) -> tuple[Array, _CollocationNewtonMatrix]:
            # Rescaling is exact for `ODETerm`, whose h f is linear in h.
            hjac = lax.cond(
                attempt.refresh,
                equations.fresh_hjac,
                lambda: (
                    attempt.hjac * (dt / safe_jacobian_dt).astype(attempt.hjac.dtype)
                ),
            )
            return hjac, _CollocationNewtonMatrix(self.tableau, hjac)

        def solve(attempt: Attempt) -> Attempt:
            hjac, newton_matrix = lax.cond(
                attempt.refactorise,
                factorise,
                lambda attempt: (attempt.hjac, attempt.newton_matrix),
                attempt,
            )
            solution = equations.solve(newton_matrix, starting_stages)
            # Should Newton's method fail with a kept Jacobian, try once more with a
            # fresh one (after which `refresh` is set, and the loop ends).
            retry = eqxi.unvmap_any(
                (solution.result != optx.RESULTS.successful)
                & jnp.invert(attempt.refresh)
            )
            return Attempt(retry, retry, retry, hjac, newton_matrix, solution)

        # A loop, so that the Newton iteration is compiled once for both attempts.
        no_solution = _zeros_shaped_like_output(
            equations.solve, state.newton_matrix, starting_stages
        )
        first = Attempt(
            pending=jnp.array(True),
            refresh=eqxi.unvmap_any(jnp.invert(keep)),
            refactorise=eqxi.unvmap_any(jnp.invert(keep & same_dt)),
            hjac=state.hjac,
            newton_matrix=state.newton_matrix,
            solution=no_solution,
        )
        last = lax.while_loop(lambda attempt: attempt.pending, solve, first)
        return last.hjac, last.newton_matrix, last.solution

    def _starting_stages(
        self,
        t0: RealScalarLike,
        t1: RealScalarLike,
        solver_state: _CollocationState,
        made_jump: Bool[ArrayLike, ""],
    ) -> Inexact[Array, "m n"]:
        """Extrapolates the previous step's collocation polynomial to this step's
        stages: `Zᵢ ≈ u_prev(t0 + cᵢ h) - u_prev(t0)`; zero for the first step and
        after a jump."""
        previous_dt = solver_state.previous_dt
        previous_coeffs = solver_state.dense_coeffs
        not_jump = jnp.invert(jnp.asarray(made_jump))
        usable = (previous_dt != 0) & not_jump
        safe_dt = jnp.where(usable, previous_dt, 1)
        with jax.numpy_dtype_promotion("standard"):
            dt = jnp.asarray(t1 - t0, dtype=previous_dt.dtype)
            theta = 1 + jnp.asarray(self.tableau.c_implicit) * dt / safe_dt
        degree = previous_coeffs.shape[0]
        basis = jnp.stack([theta**power - 1 for power in range(1, degree + 1)], axis=1)
        guess = basis.astype(previous_coeffs.dtype) @ previous_coeffs
        # (`t1 - t0` may carry tangents: a guess needs none.)
        return lax.stop_gradient(jnp.where(usable & jnp.isfinite(guess), guess, 0))

    def func(
        self,
        terms: diffrax.AbstractTerm,
        t0: RealScalarLike,
        y0: PyTree[Array],
        args: PyTree,
    ) -> PyTree[Array]:
        return terms.vf(t0, y0, args)


def collocation_init_doc(solver_name: str) -> str:
    return f"""**Arguments:**

- `root_finder`: An [Optimistix](https://github.com/patrick-kidger/optimistix) root
    finder for the stage equations. The default, a
    [`diffrax_implicit_node.SimplifiedNewton`][] whose tolerances are taken from the
    adaptive step-size controller (with `kappa=None`: tighter Newton iterations at
    tighter tolerances, as in RADAU5), uses W-transformed Jacobians. With
    `diffrax.ConstantStepSize` give the tolerances explicitly, e.g.
    `{solver_name}(root_finder=SimplifiedNewton(rtol=1e-8, atol=1e-8))`.
- `root_find_max_steps`: The most Newton iterations per step. A step whose stage
    equations have not converged by then fails: an adaptive controller rejects it and
    tries a smaller step; with constant steps `diffeqsolve` raises an error.
- `reuse_jacobian`: Whether a step may reuse the previous step's Jacobian of `f`
    (rescaled to the new step size) when Newton's method converged fast with it, as
    RADAU5 and SciPy's `Radau` do. A step whose Newton iteration fails with a reused
    Jacobian is retried at once with a fresh one, so the answer never depends on the
    reuse beyond the Newton tolerance. While the step size is also unchanged (as
    [`diffrax_implicit_node.PredictiveController`][] often keeps it), the factorised
    Newton matrix is kept too. This pays where Jacobians are expensive (a neural
    vector field, many states) and costs up to a second of compilation.
    Applies to the default `SimplifiedNewton` root finder.
"""
