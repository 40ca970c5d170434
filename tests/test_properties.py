"""Property-based tests: random stable linear systems against the matrix exponential,
and random dissipative polynomial vector fields against SciPy."""

import functools

import diffrax
import diffrax_implicit_node as din
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
from helpers import SOLVERS


SIZE = 3
RTOL = 1e-7
settings = hypothesis.settings(max_examples=12, deadline=None, derandomize=True)


def _linear(t, y, matrix):
    del t
    return matrix @ y


def _polynomial(t, y, coefficients):
    """Dissipative: -rate y - y³ plus a weak quadratic coupling."""
    del t
    rates, coupling = coefficients
    return -rates * y - y**3 + 0.1 * coupling @ (y * jnp.roll(y, 1))


@functools.cache
def _adaptive_solve(solver_cls, vector_field):
    @jax.jit
    def solve(y0, args):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            solver_cls(),
            0.0,
            1.0,
            1e-4,
            y0,
            args=args,
            stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=RTOL),
            max_steps=50_000,
        ).ys[-1]  # pyright: ignore[reportOptionalSubscript]

    return solve


stiff_spectra = hnp.arrays(np.float64, SIZE, elements=st.floats(-1, 3)).map(
    lambda exponents: -(10.0**exponents)
)
well_conditioned = hnp.arrays(
    np.float64, (SIZE, SIZE), elements=st.floats(-0.5, 0.5)
).map(lambda noise: np.eye(SIZE) + noise / SIZE)
initial_values = hnp.arrays(np.float64, SIZE, elements=st.floats(-2, 2))


@pytest.mark.slow
@hypothesis.given(
    # Backward Euler would need ~10^5 steps at this tolerance.
    solver_cls=st.sampled_from([s for s in SOLVERS if s is not din.BackwardEuler]),
    eigenvalues=stiff_spectra,
    basis=well_conditioned,
    y0=initial_values,
)
@settings
def test_random_stable_linear_systems(solver_cls, eigenvalues, basis, y0):
    matrix = basis @ np.diag(eigenvalues) @ np.linalg.inv(basis)
    exact = scipy.linalg.expm(matrix) @ y0
    y1 = _adaptive_solve(solver_cls, _linear)(jnp.asarray(y0), jnp.asarray(matrix))
    # Global error: a modest multiple of the tolerance times the size of the solution.
    scale = 1 + np.max(np.abs(y0))
    np.testing.assert_allclose(y1, exact, rtol=0, atol=200 * RTOL * scale)


@hypothesis.given(
    rates=hnp.arrays(np.float64, SIZE, elements=st.floats(0.1, 500)),
    coupling=hnp.arrays(np.float64, (SIZE, SIZE), elements=st.floats(-1, 1)),
    y0=initial_values,
)
@settings
def test_random_polynomial_vector_fields(rates, coupling, y0):
    coefficients = (jnp.asarray(rates), jnp.asarray(coupling))
    y1 = _adaptive_solve(din.RadauIIA5, _polynomial)(jnp.asarray(y0), coefficients)
    reference = scipy.integrate.solve_ivp(
        lambda t, y: np.asarray(_polynomial(t, y, coefficients)),
        (0.0, 1.0),
        y0,
        method="LSODA",
        rtol=1e-12,
        atol=1e-12,
    ).y[:, -1]
    np.testing.assert_allclose(y1, reference, rtol=0, atol=200 * RTOL)
