"""Forward sensitivities of the end states of many short integrations with respect to
the parameters of the vector field, through each implicit step by the implicit
function theorem: the residual Jacobian of a Gauss--Newton fit, without
differentiating the solver.

A collocation step from `y0` with converged stages `Zᵢ = Yᵢ - y0` (all `s` stages,
an explicit first one included, whose row of `a` is zero) satisfies

    Zᵢ = Σⱼ aᵢⱼ h f(tⱼ, y0 + Zⱼ, θ),        y1 = y0 + Zₛ.

Differentiating with respect to `θ`, with `S = dy0/dθ` (`n × p`), `Jⱼ = ∂f/∂y` and
`Fⱼ = ∂f/∂θ` at the stages,

    (I - (a ⊗ I) blockdiag(h Jⱼ)) dZ/dθ = (a ⊗ I) [h (Jⱼ S + Fⱼ)]ⱼ,

one `sn × sn` system with `p` right-hand sides: a single LU factorisation per step
serves every parameter. `jax.jacfwd` through the solver instead pushes each of the
`p` tangents through the whole step (Newton's method, the error estimate, the dense
output), which costs orders of magnitude more to run and to compile.
"""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from ._polynomial import PolynomialLibrary
from ._solver import AbstractCollocationSolver


# (t, y) -> ∂f/∂θ(t, y), of shape (n, p).
ParameterJacobian = Callable[[Scalar, Float[Array, " n"]], Float[Array, "n p"]]


class Sensitivities(eqx.Module):
    """The end states of the intervals and their derivatives with respect to the
    parameters."""

    y1: Float[Array, "m n"]
    jacobian: Float[Array, "m n p"]
    succeeded: Bool[Array, " m"]


def generic_parameter_jacobian(
    field_of_parameters: Callable[[Float[Array, " p"]], Callable],
    parameters: Float[Array, " p"],
    args: PyTree,
) -> ParameterJacobian:
    """`∂f/∂θ` by forward-mode differentiation of the vector field (not the solver):
    for any model."""

    def jacobian(t, y):
        return jax.jacfwd(lambda p: field_of_parameters(p)(t, y, args))(parameters)

    return jacobian


def library_parameter_jacobian(library: PolynomialLibrary) -> ParameterJacobian:
    """`∂f/∂C` of a [`diffrax_implicit_node.PolynomialLibrary`][] that is the whole
    trainable vector field: equation `i` depends on row `i` of `C` alone, through the
    monomials, so `∂fᵢ/∂C_lk = δᵢₗ φₖ(y)` (with `C` flattened row by row), and zero
    for a removed term."""

    def jacobian(t, y):
        del t
        features = library.features(y)
        size = library.size
        identity = jnp.eye(size, dtype=features.dtype)
        support = library.support.astype(features.dtype)
        return (identity[:, :, None] * (support * features[None, :])[None]).reshape(
            size, -1
        )

    return jacobian


def supports_sensitivities(solver: diffrax.AbstractSolver) -> bool:
    """Whether `interval_sensitivities` can differentiate steps of `solver`."""
    return isinstance(solver, AbstractCollocationSolver)


def _step_sensitivity(
    vector_field: Callable,
    parameter_jacobian: ParameterJacobian,
    solver: AbstractCollocationSolver,
    t0: Scalar,
    t1: Scalar,
    y0: Float[Array, " n"],
    coeffs: Float[Array, "s n"],
    sensitivity: Float[Array, "n p"],
    args: PyTree,
) -> Float[Array, "n p"]:
    """`dy1/dθ` of one collocation step, given `dy0/dθ` and the step's collocation
    polynomial `y0 + Σₘ θᵐ coeffs[m - 1]`, whose values at the nodes are the stages."""
    tableau = solver.tableau
    dtype = y0.dtype
    c = jnp.asarray(tableau.c, dtype=dtype)
    a = jnp.asarray(tableau.a, dtype=dtype)
    stages, size = coeffs.shape
    # vandermonde[i, m - 1] = cᵢᵐ
    vandermonde = np.vander(tableau.c, stages + 1, increasing=True)[:, 1:]
    stage_states = y0[None, :] + jnp.asarray(vandermonde, dtype=dtype) @ coeffs
    with jax.numpy_dtype_promotion("standard"):
        h = jnp.asarray(t1 - t0, dtype=dtype)
        stage_times = t0 + c * h
    state_jacobians = jax.vmap(
        lambda t, y: jax.jacfwd(lambda y: vector_field(t, y, args))(y)
    )(stage_times, stage_states)
    parameter_jacobians = jax.vmap(parameter_jacobian)(stage_times, stage_states)
    hj = h * state_jacobians
    # M[i p, j q] = δᵢⱼ δₚ𝑞 - aᵢⱼ h Jⱼ[p, q]
    matrix = jnp.eye(stages * size, dtype=dtype) - jnp.einsum(
        "ij,jpq->ipjq", a, hj
    ).reshape(stages * size, stages * size)
    right = jnp.einsum("ij,jpk->ipk", a, hj @ sensitivity + h * parameter_jacobians)
    # The inverse from one LU, then a matrix product: XLA:CPU's batched triangular
    # solves with hundreds of right-hand sides are about 10x slower than that.
    increments = jnp.linalg.inv(matrix) @ right.reshape(stages * size, -1)
    return sensitivity + increments.reshape(stages, size, -1)[-1]


def interval_sensitivities(
    vector_field: Callable,
    parameter_jacobian: ParameterJacobian,
    num_parameters: int,
    t0: Float[Array, " m"],
    t1: Float[Array, " m"],
    y0: Float[Array, "m n"],
    steps: Int[Array, " m"],
    *,
    solver: AbstractCollocationSolver,
    max_steps: int,
    args: PyTree,
) -> Sensitivities:
    """Integrates each interval in its number of equal `steps` (at most `max_steps`),
    as `interval_predictions` does, and carries the sensitivities of the state along.

    Steps with the solver's own `step` (the same computation as `diffeqsolve` with
    constant steps), then differentiates each step as in the module's docstring. A
    window with a failed step has a zero Jacobian and `succeeded` false.
    """
    if max_steps == 1:
        # As in `interval_predictions`: one step has nothing to reuse.
        solver = eqx.tree_at(lambda s: s.reuse_jacobian, solver, False)
    term = diffrax.ODETerm(vector_field)

    def window(t0, t1, y0, steps):
        dt = (t1 - t0) / steps.astype(t0.dtype)
        solver_state = solver.init(term, t0, t1, y0, args)
        sensitivity = jnp.zeros((y0.shape[0], num_parameters), dtype=y0.dtype)

        def step(carry, index):
            ta, y, sensitivity, solver_state, succeeded = carry
            tb = jnp.where(index == steps - 1, t1, ta + dt)
            y_next, _, dense_info, next_state, result = solver.step(
                term, ta, tb, y, args, solver_state, made_jump=False
            )
            next_sensitivity = _step_sensitivity(
                vector_field,
                parameter_jacobian,
                solver,
                ta,
                tb,
                y,
                dense_info["coeffs"],
                sensitivity,
                args,
            )
            # A window with fewer steps than the longest idles through the rest.
            active = index < steps
            succeeded = succeeded & (~active | (result == diffrax.RESULTS.successful))
            carry = jax.tree.map(
                lambda new, old: jnp.where(active, new, old),
                (tb, y_next, next_sensitivity, next_state),
                (ta, y, sensitivity, solver_state),
            )
            return (*carry, succeeded), None

        carry = (t0, y0, sensitivity, solver_state, jnp.array(True))
        (_, y1, sensitivity, _, succeeded), _ = lax.scan(
            step, carry, jnp.arange(max_steps)
        )
        finite = succeeded & jnp.all(jnp.isfinite(sensitivity))
        return y1, jnp.where(finite, sensitivity, 0), succeeded

    y1, jacobian, succeeded = jax.vmap(window)(t0, t1, y0, steps)
    return Sensitivities(y1=y1, jacobian=jacobian, succeeded=succeeded)
