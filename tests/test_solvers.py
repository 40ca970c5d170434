import diffrax
import diffrax_implicit_node as din
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
import pytest
from diffrax_implicit_node._solver.collocation import _StageJacobianLU
from helpers import (
    call_field,
    fixed_step_solve,
    kaps_exact,
    kaps_vector_field,
    linear_exact,
    linear_vector_field,
    naive_step,
    NeuralField,
    one_step,
    ORDERS,
    slope,
    SOLVERS,
    tight,
)


# Step counts chosen so that errors sit well above round-off and in the asymptotic
# regime (h |λ| small for the stiff eigenvalue would need far more steps, so the stiff
# mode is resolved by the methods' stability rather than by accuracy).
STEPS = {
    din.BackwardEuler: (64, 128, 256, 512),
    din.Trapezoid: (64, 128, 256, 512),
    din.RadauIIA3: (32, 64, 128, 256),
    din.RadauIIA5: (8, 16, 32, 64),
}


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_convergence_order_linear(solver_cls):
    solve = fixed_step_solve(solver_cls, linear_vector_field)
    y0 = jnp.array([1.0, 2.0, -1.0])
    t1 = 1.0
    # Start on the slow manifold's neighbourhood after the fast transient has decayed,
    # so that the classical order is visible for every method (Trapezoid included).
    y_start = linear_exact(0.05, y0)
    exact = linear_exact(t1, y0)
    errors = [
        np.max(np.abs(solve(0.05, t1, (t1 - 0.05) / n, y_start, None)[-1] - exact))
        for n in STEPS[solver_cls]
    ]
    assert slope(STEPS[solver_cls], errors) == pytest.approx(
        ORDERS[solver_cls], abs=0.3
    )


def _kaps_errors(solver_cls, stiffness, steps):
    solve = fixed_step_solve(solver_cls, kaps_vector_field)
    y0 = jnp.array([1.0, 1.0])
    return [
        np.max(np.abs(solve(0.0, 1.0, 1 / n, y0, stiffness)[-1] - kaps_exact(1.0)))
        for n in steps
    ]


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_convergence_order_nonlinear(solver_cls):
    # Mildly stiff, so that h|λ| is small enough for the classical order to show.
    errors = _kaps_errors(solver_cls, 10.0, STEPS[solver_cls])
    assert slope(STEPS[solver_cls], errors) == pytest.approx(
        ORDERS[solver_cls], abs=0.3
    )


@pytest.mark.parametrize("solver_cls", (din.RadauIIA3, din.RadauIIA5))
def test_order_reduction_is_bounded_when_stiff(solver_cls):
    # With stiffness 1000 and 1 << h|λ|, Radau IIA shows the known order reduction, but
    # never below its stage order s (Hairer & Wanner VI.7): the error still converges.
    steps = (8, 16, 32, 64)
    stages = len(solver_cls.tableau.c)
    errors = _kaps_errors(solver_cls, 1000.0, steps)
    assert slope(steps, errors) > stages - 0.2
    assert max(errors) < 1e-4


STABILITY_FUNCTIONS = {
    din.BackwardEuler: lambda z: 1 / (1 - z),
    din.Trapezoid: lambda z: (1 + z / 2) / (1 - z / 2),
    din.RadauIIA3: lambda z: (1 + z / 3) / (1 - 2 * z / 3 + z**2 / 6),
    din.RadauIIA5: lambda z: (
        (1 + 2 * z / 5 + z**2 / 20) / (1 - 3 * z / 5 + 3 * z**2 / 20 - z**3 / 60)
    ),
}


def _rotation_field(t, y, args):
    """y' = (a + ib) y, written as a real 2-vector (re, im)."""
    del t
    a, b = args
    return jnp.stack([a * y[0] - b * y[1], b * y[0] + a * y[1]])


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_stability_function(solver_cls):
    step = jax.jit(
        lambda args: one_step(
            tight(solver_cls), _rotation_field, 0.0, 1.0, jnp.array([1.0, 0.0]), args
        )[0]
    )
    zs = [-0.5, -3.0, -40.0, -1e3, 0.5j, 2j, 30j, -2 + 3j]
    for z in zs:
        y1 = np.asarray(step((jnp.array(np.real(z)), jnp.array(np.imag(z)))))
        expected = STABILITY_FUNCTIONS[solver_cls](z)
        np.testing.assert_allclose(
            y1[0] + 1j * y1[1], expected, rtol=1e-10, atol=1e-12, err_msg=f"z={z}"
        )


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_very_stiff_single_step(solver_cls):
    y0 = jnp.array([1.0])
    y1, *_ = one_step(
        tight(solver_cls), lambda t, y, args: -1e6 * y, 0.0, 1.0, y0, None
    )
    if solver_cls is din.Trapezoid:
        # A- but not L-stable: R(z) -> -1.
        assert y1[0] == pytest.approx(-1.0, abs=1e-5)
    else:
        assert abs(y1[0]) < 1e-5


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_single_step_matches_naive_newton(solver_cls):
    field = NeuralField(jax.random.key(0), size=3)
    y0 = jnp.array([0.3, -1.2, 0.7])
    t0, h = 0.2, 0.05
    y1, *_ = one_step(tight(solver_cls), call_field, t0, t0 + h, y0, field)
    reference = naive_step(solver_cls, call_field, t0, y0, h, field)
    np.testing.assert_allclose(y1, reference, rtol=0, atol=1e-10)


def _loss_fn(solver_cls, solver_style):
    def loss(field, y0, t1):
        if solver_style == "naive":
            y = y0
            for i in range(3):
                y = naive_step(solver_cls, call_field, i * t1 / 3, y, t1 / 3, field)
        else:
            y = diffrax.diffeqsolve(
                diffrax.ODETerm(call_field),
                tight(solver_cls),
                0.0,
                t1,
                t1 / 3,
                y0,
                args=field,
                stepsize_controller=diffrax.ConstantStepSize(),
            ).ys[-1]  # pyright: ignore[reportOptionalSubscript]
        return jnp.sum(jnp.sin(y) * jnp.array([1.0, -2.0]))

    return loss


@pytest.mark.slow
@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_gradients(solver_cls):
    inputs = (NeuralField(jax.random.key(1)), jnp.array([0.5, -0.8]), jnp.array(0.3))
    params, static = eqx.partition(inputs, eqx.is_inexact_array)

    def loss(params, style):
        return _loss_fn(solver_cls, style)(*eqx.combine(params, static))

    grads = eqx.filter_jit(jax.grad(loss))(params, "package")

    # Against differentiating the naive reference through its unrolled iterations.
    naive_grads = eqx.filter_jit(jax.grad(loss))(params, "naive")
    for ours, naive in zip(jax.tree.leaves(grads), jax.tree.leaves(naive_grads)):
        np.testing.assert_allclose(ours, naive, rtol=1e-6, atol=1e-9)

    # Against central finite differences along random directions: through the
    # parameters, y0 and t1 all at once, and through y0 alone and t1 alone.
    compiled = eqx.filter_jit(loss)
    eps = 1e-6
    for seed, only in enumerate((None, 1, 2)):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        random = jax.tree.unflatten(
            treedef,
            [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)],
        )
        direction = tuple(
            d if only in (None, i) else jax.tree.map(jnp.zeros_like, d)
            for i, d in enumerate(random)
        )
        plus, minus = (
            jax.tree.map(lambda p, d: p + sign * eps * d, params, direction)
            for sign in (1, -1)
        )
        finite_difference = (compiled(plus, "package") - compiled(minus, "package")) / (
            2 * eps
        )
        directional = sum(
            jnp.vdot(g, d)
            for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction))
        )
        assert float(directional) == pytest.approx(
            float(finite_difference), rel=1e-6, abs=1e-9
        )


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_stage_jacobian_solve_matches_dense_jacobian(solver_cls):
    # The gradient's linear solve builds the stage Jacobian from one product per state
    # component; it must equal the dense Jacobian, stage by stage, exactly.
    a = solver_cls.tableau.a_implicit
    stages, size = a.shape[0], 3
    keys = jax.random.split(jax.random.key(0), 3)
    weights = jax.random.normal(keys[0], (stages, size, size))

    def residual(z, args):
        del args
        # Block i depends on z_i alone, through a different function for each stage.
        g = jax.vmap(lambda w, zi: jnp.tanh(w @ zi) * zi**2)(weights, z)
        return z - jnp.asarray(a) @ g

    z = jax.random.normal(keys[1], (stages, size))
    vector = jax.random.normal(keys[2], (stages, size))
    dense = jax.jacfwd(lambda z: residual(z, None))(z).reshape(stages * size, -1)
    solver = _StageJacobianLU(tuple(map(tuple, a.tolist())))
    state = solver.init(lx.JacobianLinearOperator(residual, z, None), {})
    transposed_state, _ = solver.transpose(state, {})
    for matrix, solver_state in ((dense, state), (dense.T, transposed_state)):
        solution, result, _ = solver.compute(solver_state, vector, {})
        assert result == lx.RESULTS.successful
        expected = np.linalg.solve(matrix, np.asarray(vector).reshape(-1))
        np.testing.assert_allclose(solution.reshape(-1), expected, rtol=1e-12)


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_w_transformed_newton_matches_generic_root_finders(solver_cls):
    # The default root finder solves the W-transformed system with one Jacobian per
    # step; Optimistix's Newton and Chord know nothing of that structure.
    field = NeuralField(jax.random.key(2), size=3)
    y0 = jnp.array([0.3, -1.2, 0.7])
    results = [
        one_step(
            solver_cls(root_finder=root_finder, root_find_max_steps=30),
            call_field,
            0.1,
            0.2,
            y0,
            field,
        )
        for root_finder in (
            din.SimplifiedNewton(rtol=1e-12, atol=1e-12),
            optx.Newton(rtol=1e-12, atol=1e-12),
            optx.Chord(rtol=1e-12, atol=1e-12),
        )
    ]
    for y1, error, _, _, result in results:
        assert result == diffrax.RESULTS.successful
        np.testing.assert_allclose(y1, results[0][0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(error, results[0][1], rtol=1e-8, atol=1e-14)
