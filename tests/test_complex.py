"""Complex states: with one Newton system per eigenvalue of A⁻¹ (a conjugate pair no
longer shares one), the error estimate, dense output and gradients, in complex128."""

import warnings

import diffrax
import diffrax_implicit_node as din
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import fixed_step_solve, one_step, ORDERS, slope, SOLVERS, TABLEAUS, tight


# Diffrax and Optimistix warn that their complex support is a work in progress.
pytestmark = pytest.mark.filterwarnings("ignore:Complex:UserWarning")

# A non-normal complex matrix with eigenvalues -1 + 3i, -2 - 5i and -40 + 10i.
_BASIS = np.array([[1.0, 1j, 0.0], [0.5, 1.0, 1.0 - 1j], [0.0, 2.0, 1.0]])
MATRIX = _BASIS @ np.diag([-1 + 3j, -2 - 5j, -40 + 10j]) @ np.linalg.inv(_BASIS)
Y0 = np.array([1.0 + 0.5j, -0.5j, 2.0])


def complex_linear(t, y, args):
    del t, args
    return jnp.asarray(MATRIX) @ y


def exact(t):
    return scipy.linalg.expm(MATRIX * t) @ Y0


def stiffly_accurate_linear_step(solver_cls, h):
    """One step of the method on `y' = M y`, from the stage equations
    `Yᵢ = y0 + h Σⱼ aᵢⱼ M Yⱼ` solved directly: `y1 = Yₛ`."""
    _, a = TABLEAUS[solver_cls]
    stages, size = len(a), len(Y0)
    system = np.eye(stages * size) - h * np.kron(a, MATRIX)
    stage_values = np.linalg.solve(system, np.tile(Y0, stages))
    return stage_values[-size:]


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_step_solves_the_complex_stage_equations(solver_cls):
    h = 0.05
    y1, *_ = one_step(
        tight(solver_cls, 1e-13), complex_linear, 0.0, h, jnp.asarray(Y0), None
    )
    assert y1.dtype == jnp.complex128
    np.testing.assert_allclose(
        y1, stiffly_accurate_linear_step(solver_cls, h), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("solver_cls", [din.RadauIIA3, din.RadauIIA5])
def test_complex_convergence_order(solver_cls):
    solve = fixed_step_solve(solver_cls, complex_linear)
    steps = np.array([16, 32, 64])
    errors = [
        np.max(np.abs(solve(0.0, 1.0, 1.0 / n, jnp.asarray(Y0), None)[-1] - exact(1)))
        for n in steps
    ]
    order = slope(steps, errors)
    assert ORDERS[solver_cls] - 0.3 < order < ORDERS[solver_cls] + 0.5, errors


def test_complex_adaptive_and_dense_output():
    ts = jnp.linspace(0.0, 2.0, 9)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(complex_linear),
        din.RadauIIA5(),
        0.0,
        2.0,
        None,
        jnp.asarray(Y0),
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
        saveat=diffrax.SaveAt(ts=ts, dense=True),
    )
    expected = np.stack([exact(t) for t in np.asarray(ts)])
    np.testing.assert_allclose(solution.ys, expected, rtol=0, atol=1e-6)
    # Between the steps: the collocation polynomials.
    between = np.asarray(ts[:-1]) + 0.13
    dense = jax.vmap(solution.evaluate)(jnp.asarray(between))
    expected = np.stack([exact(t) for t in between])
    np.testing.assert_allclose(dense, expected, rtol=0, atol=1e-6)


def test_complex_gradients_match_finite_differences():
    """`λ = a + i b` with real `a, b`; the loss is real. Gradients come from the
    implicit function theorem with complex stages; the finite differences are of
    the same fixed-step solve."""
    solve = fixed_step_solve(
        din.RadauIIA5, lambda t, y, args: jax.lax.complex(args[0], args[1]) * y
    )
    target = jnp.asarray([0.2 - 0.1j, 0.3j])

    def loss(params):
        y0 = jnp.asarray([1.0 + 0.5j, -0.5j])
        y1 = solve(0.0, 1.0, 0.1, y0, params)[-1]
        return jnp.sum(jnp.abs(y1 - target) ** 2)

    params = jnp.asarray([-3.0, 7.0])
    gradient = jax.grad(loss)(params)
    step = 1e-6
    finite_differences = [
        (loss(params + step * e) - loss(params - step * e)) / (2 * step)
        for e in jnp.eye(2)
    ]
    np.testing.assert_allclose(gradient, finite_differences, rtol=1e-6)


def test_complex64_warns_complex128_does_not():
    term = diffrax.ODETerm(complex_linear)
    solver = din.RadauIIA5()
    with pytest.warns(din.LowPrecisionWarning, match="complex128"):
        solver.init(term, 0.0, 1.0, jnp.asarray(Y0, dtype=jnp.complex64), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", din.LowPrecisionWarning)
        solver.init(term, 0.0, 1.0, jnp.asarray(Y0), None)
