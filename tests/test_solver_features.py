import diffrax
import diffrax_implicit_node as din
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
import scipy.integrate
from helpers import (
    fixed_step_solve,
    linear_exact,
    linear_vector_field,
    ORDERS,
    slope,
    SOLVERS,
    tight,
)


def hires(t, y, args):
    del t, args
    y1, y2, y3, y4, y5, y6, y7, y8 = y
    return jnp.stack(
        [
            -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
            1.71 * y1 - 8.75 * y2,
            -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4,
            -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -280 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
            280 * y6 * y8 - 1.81 * y7,
            -280 * y6 * y8 + 1.81 * y7,
        ]
    )


HIRES_Y0 = np.array([1, 0, 0, 0, 0, 0, 0, 0.0057])
HIRES_T1 = 321.8122


# The reference solution at t = 321.8122 of the Test Set for IVP Solvers (Mazzia &
# Magherini, University of Bari), computed there with RADAU5 at tolerance 1e-14;
# SciPy's `Radau` at rtol = atol = 1e-13 agrees with it to 2e-11 (relative).
HIRES_REFERENCE = np.array(
    [
        0.7371312573325668e-3,
        0.1442485726316185e-3,
        0.5888729740967575e-4,
        0.1175651343283149e-2,
        0.2386356198831331e-2,
        0.6238968252742796e-2,
        0.2849998395185769e-2,
        0.2850001604814231e-2,
    ]
)


# On HIRES the stiff components cost Radau IIA some order (between its stage order
# s + 1 and 2s - 1, Hairer & Wanner VI.7); the non-stiff methods keep theirs.
HIRES_ORDERS = {
    din.BackwardEuler: 1.0,
    din.Trapezoid: 2.0,
    din.RadauIIA3: 2.5,
    din.RadauIIA5: 4.0,
}


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_hires_fixed_steps_against_reference(solver_cls):
    # The fast initial transient (t < 5) is resolved with small steps; the rest of the
    # interval with large ones, where the error must fall as the method's order says.
    solve = fixed_step_solve(solver_cls, hires)
    t_switch = 5.0
    head = solve(0.0, t_switch, t_switch / 1000, jnp.asarray(HIRES_Y0), None)[-1]
    steps = (100, 200, 400)
    errors = [
        np.max(
            np.abs(
                solve(t_switch, HIRES_T1, (HIRES_T1 - t_switch) / n, head, None)[-1]
                - HIRES_REFERENCE
            )
        )
        for n in steps
    ]
    assert slope(steps, errors) > HIRES_ORDERS[solver_cls] - 0.2
    assert errors[-1] < {1: 5e-4, 2: 5e-6, 3: 5e-8, 5: 1e-9}[ORDERS[solver_cls]]


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_adaptive_hires_matches_reference(solver_cls):
    if solver_cls is din.BackwardEuler:
        pytest.skip("needs ~10^5 steps at this tolerance; covered by the benchmarks")
    rtol = 1e-6
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(hires),
        solver_cls(),
        0.0,
        HIRES_T1,
        1e-3,
        jnp.asarray(HIRES_Y0),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol),
        max_steps=20_000,
    )
    # Global error is a modest multiple of the local tolerance.
    assert solution.ys is not None
    assert np.max(
        np.abs(solution.ys[-1] - HIRES_REFERENCE) / (np.abs(HIRES_REFERENCE) + 1e-3)
    ) < (5e3 * rtol)


def _van_der_pol(t, y, mu):
    del t
    return jnp.stack([y[1], mu * ((1 - y[0] ** 2) * y[1]) - y[0]])


@pytest.mark.slow
def test_adaptive_van_der_pol_matches_scipy():
    mu, t1, rtol = 1000.0, 3000.0, 1e-6
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(_van_der_pol),
        din.RadauIIA5(),
        0.0,
        t1,
        1e-6,
        jnp.array([2.0, 0.0]),
        args=mu,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol),
        max_steps=20_000,
    )
    reference = scipy.integrate.solve_ivp(
        lambda t, y: np.asarray(_van_der_pol(t, y, mu)),
        (0, t1),
        [2.0, 0.0],
        method="LSODA",
        rtol=1e-12,
        atol=1e-12,
        jac=lambda t, y: np.asarray(jax.jacfwd(_van_der_pol, argnums=1)(t, y, mu)),
    ).y[:, -1]
    assert solution.ys is not None
    # Within a few times rtol: the default Newton tolerance shrinks with rtol (as in
    # RADAU5), so that Newton errors do not pile up unseen by the error estimate.
    np.testing.assert_allclose(solution.ys[-1], reference, rtol=5e-6)
    # Steps comparable to SciPy's Radau at the same tolerance (it takes ~ 500 here).
    assert int(solution.stats["num_accepted_steps"]) < 1500


# Dense output: the collocation polynomial is accurate to O(h^(s+1)), capped by the
# order of the method.
DENSE_ORDERS = {
    din.BackwardEuler: 1,
    din.Trapezoid: 2,
    din.RadauIIA3: 3,
    din.RadauIIA5: 4,
}


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_dense_output_order(solver_cls):
    solve = fixed_step_solve(solver_cls, linear_vector_field)
    t0, t1 = 0.05, 1.05
    y_start = linear_exact(t0, jnp.array([1.0, 2.0, -1.0]))
    steps = (16, 32, 64) if ORDERS[solver_cls] > 2 else (64, 128, 256)
    errors = []
    for n in steps:
        # Off the step grid: a third of the way through steps n/4 and 3n/4.
        h = (t1 - t0) / n
        ts = jnp.array([t0 + (n // 4 + 1 / 3) * h, t0 + (3 * n // 4 + 2 / 3) * h])
        ys = solve(t0, t1, h, y_start, None, ts)
        exact = np.stack([linear_exact(t - t0, y_start) for t in np.asarray(ts)])
        errors.append(np.max(np.abs(ys - exact)))
    assert slope(steps, errors) > DENSE_ORDERS[solver_cls] - 0.3


def test_dense_output_interpolates_the_steps():
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(linear_vector_field),
        tight(din.RadauIIA5),
        0.0,
        1.0,
        0.1,
        jnp.array([1.0, 2.0, -1.0]),
        saveat=diffrax.SaveAt(steps=True, dense=True),
        stepsize_controller=diffrax.ConstantStepSize(),
    )
    steps = int(solution.stats["num_steps"])
    assert solution.ts is not None and solution.ys is not None
    for t, y in zip(solution.ts[:steps], solution.ys[:steps]):
        np.testing.assert_allclose(solution.evaluate(t), y, rtol=1e-12, atol=1e-12)
    # The derivative of the dense output is the vector field, to the method's accuracy.
    t = 0.55
    np.testing.assert_allclose(
        solution.derivative(t),
        linear_vector_field(t, solution.evaluate(t), None),
        rtol=1e-3,
        atol=1e-3,
    )


def test_pytree_state_jit_and_vmap():
    def field(t, y, args):
        del t
        rate, coupling = args
        return {"fast": -rate * y["fast"] + coupling * y["slow"], "slow": -y["slow"]}

    def solve(y0, args):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            din.RadauIIA5(),
            0.0,
            1.0,
            0.01,
            y0,
            args=args,
            stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
        ).ys

    y0 = {"fast": jnp.array([1.0, 2.0]), "slow": jnp.array([3.0, -1.0])}
    batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), y0)
    rates = jnp.array([100.0, 1000.0])
    ys = jax.jit(jax.vmap(solve, in_axes=(0, (0, None))))(batch, (rates, 0.5))
    for i, rate in enumerate([100.0, 1000.0]):
        scale = i + 1
        slow = scale * y0["slow"] * np.exp(-1.0)
        # fast' = -rate fast + 0.5 slow with slow = s0 e^{-t}:
        forced = 0.5 * scale * y0["slow"] / (rate - 1)
        fast = (scale * y0["fast"] - forced) * np.exp(-rate) + forced * np.exp(-1.0)
        np.testing.assert_allclose(ys["slow"][i, -1], slow, rtol=1e-6)
        np.testing.assert_allclose(ys["fast"][i, -1], fast, rtol=1e-6)


@pytest.mark.parametrize("solver_cls", SOLVERS)
def test_float32(solver_cls):
    y0 = jnp.array([1.0, 2.0, -1.0], dtype=jnp.float32)
    t0, t1, dt0 = (jnp.float32(x) for x in (0.0, 1.0, 0.01))
    with pytest.warns(din.LowPrecisionWarning, match="float64"):
        y1 = diffrax.diffeqsolve(
            diffrax.ODETerm(linear_vector_field),
            solver_cls(root_finder=din.SimplifiedNewton(rtol=1e-5, atol=1e-5)),
            t0,
            t1,
            dt0,
            y0,
            stepsize_controller=diffrax.ConstantStepSize(),
        ).ys[-1]  # pyright: ignore[reportOptionalSubscript]
    assert y1.dtype == jnp.float32
    tolerance = {1: 2e-2, 2: 1e-3, 3: 1e-3, 5: 1e-3}[ORDERS[solver_cls]]
    np.testing.assert_allclose(
        y1, linear_exact(1.0, y0), rtol=tolerance, atol=tolerance
    )


def test_reverse_time():
    y1 = jnp.array([0.3, 0.5])
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: -y),
        tight(din.RadauIIA5),
        1.0,
        0.0,
        -0.05,
        y1,
        stepsize_controller=diffrax.ConstantStepSize(),
    )
    assert solution.ys is not None
    np.testing.assert_allclose(solution.ys[-1], y1 * np.e, rtol=1e-9)


def test_missing_tolerances_with_constant_steps():
    with pytest.raises(ValueError, match="tolerances for the implicit solver"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(linear_vector_field),
            din.RadauIIA5(),
            0.0,
            1.0,
            0.1,
            jnp.ones(3),
            stepsize_controller=diffrax.ConstantStepSize(),
        )


def _cubic_stiff(t, y, args):
    del t, args
    return -1e3 * y**3 + jnp.sin(y)


def test_newton_failure_raises_with_constant_steps():
    # One Newton iteration cannot converge on this nonlinear step.
    solver = din.RadauIIA5(
        root_finder=din.SimplifiedNewton(rtol=1e-10, atol=1e-10), root_find_max_steps=1
    )
    with pytest.raises(Exception, match="[Nn]onlinear solve|maximum number of steps"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(_cubic_stiff),
            solver,
            0.0,
            1.0,
            0.5,
            jnp.array([1.0]),
            stepsize_controller=diffrax.ConstantStepSize(),
        )


def test_newton_failure_rejects_adaptive_steps():
    # A first step far too large for the Newton iteration: it must be rejected and
    # retried smaller, and the solve must still be accurate.
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(_cubic_stiff),
        din.RadauIIA5(root_find_max_steps=3),
        0.0,
        1.0,
        1.0,
        jnp.array([1.0]),
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
    )
    assert int(solution.stats["num_rejected_steps"]) > 0
    reference = scipy.integrate.solve_ivp(
        lambda t, y: -1e3 * y**3 + np.sin(y),
        (0, 1),
        [1.0],
        rtol=1e-12,
        atol=1e-12,
        method="Radau",
    ).y[0, -1]
    assert solution.ys is not None
    assert float(solution.ys[-1, 0]) == pytest.approx(reference, rel=1e-5)


def test_solver_contract():
    term = diffrax.ODETerm(linear_vector_field)
    for solver_cls in SOLVERS:
        solver = solver_cls()
        assert isinstance(solver, diffrax.AbstractImplicitSolver)
        assert isinstance(solver, diffrax.AbstractAdaptiveSolver)
        assert solver.order(term) == ORDERS[solver_cls]
        assert solver.interpolation_cls is din.LocalPolynomialInterpolation
    assert din.RadauIIA5().error_order(term) == 4
    assert din.RadauIIA3().error_order(term) == 3
    assert din.Trapezoid().error_order(term) == 3
    assert din.BackwardEuler().error_order(term) == 2


def test_non_finite_y0_is_named():
    with pytest.raises(Exception, match="`y0` contains non-finite values"):
        diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, args: -y),
            tight(din.RadauIIA5),
            0.0,
            1.0,
            0.1,
            jnp.array([jnp.nan, 1.0]),
            stepsize_controller=diffrax.ConstantStepSize(),
        )


def test_event_progress_meter_and_saveat():
    # Stop when the slow component of the linear system crosses 0.5, and locate the
    # crossing through the dense output.
    def cond_fn(t, y, args, **kwargs):
        del t, args, kwargs
        return y[0] - 0.5

    y0 = jnp.array([1.0, 2.0, -1.0])
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(linear_vector_field),
        din.RadauIIA5(),
        0.0,
        10.0,
        1e-3,
        y0,
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
        event=diffrax.Event(cond_fn, root_finder=optx.Newton(rtol=1e-10, atol=1e-10)),
        saveat=diffrax.SaveAt(t0=True, t1=True, ts=jnp.linspace(0.0, 0.02, 5)),
        progress_meter=diffrax.TextProgressMeter(),
    )
    assert solution.result == diffrax.RESULTS.event_occurred
    assert solution.ts is not None and solution.ys is not None
    t_event = float(solution.ts[-1])
    assert linear_exact(t_event, y0)[0] == pytest.approx(0.5, abs=1e-8)
    np.testing.assert_allclose(solution.ys[-1, 0], 0.5, atol=1e-8)
    # Saved points before the event come from the dense output.
    for t, y in zip(solution.ts[1:-1], solution.ys[1:-1]):
        np.testing.assert_allclose(y, linear_exact(float(t), y0), rtol=1e-7, atol=1e-8)


def robertson(t, y, args):
    del t, args
    y1, y2, y3 = y
    return jnp.stack(
        [
            -0.04 * y1 + 1e4 * y2 * y3,
            0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2,
            3e7 * y2**2,
        ]
    )


@pytest.mark.slow
def test_robertson_keeps_its_linear_invariant_like_scipy():
    """A closed reaction network: y1 + y2 + y3 stays 1 (every step keeps a linear
    invariant of `f` up to round-off, however loosely Newton's method converged)."""
    ts = np.geomspace(1e-5, 1e5, 30)
    rtol, atol = 1e-4, 1e-6
    ys = diffrax.diffeqsolve(
        diffrax.ODETerm(robertson),
        din.RadauIIA5(),
        0.0,
        1e5,
        None,
        jnp.array([1.0, 0.0, 0.0]),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(ts=jnp.asarray(ts)),
        max_steps=10_000,
    ).ys
    scipy_ys = scipy.integrate.solve_ivp(
        lambda t, y: np.asarray(robertson(t, y, None)),
        (0.0, 1e5),
        [1.0, 0.0, 0.0],
        method="Radau",
        rtol=rtol,
        atol=atol,
        t_eval=ts,
    ).y.T
    drift = np.max(np.abs(np.sum(np.asarray(ys), axis=1) - 1))
    scipy_drift = np.max(np.abs(np.sum(scipy_ys, axis=1) - 1))
    assert drift <= 10 * max(scipy_drift, np.finfo(np.float64).eps)


def e5(t, y, args):
    """Problem E5 of the stiff DETEST set (chemical pyrolysis): y1 is about 1e-3, the
    others 1e-10 and below, and y2 - y3 - y4 is an invariant."""
    del t, args
    a, b, c, m = 7.89e-10, 1.1e7, 1.13e3, 1e6
    y1, y2, y3, y4 = y
    return jnp.stack(
        [
            -a * y1 - b * y1 * y3,
            a * y1 - m * c * y2 * y3,
            a * y1 - b * y1 * y3 - m * c * y2 * y3 + c * y4,
            b * y1 * y3 - c * y4,
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize("reuse_jacobian", [True, False])
def test_badly_scaled_kinetics_keep_their_linear_invariant_to_round_off(
    reuse_jacobian,
):
    """E5 over 13 decades of time at a loose rtol: y2 - y3 - y4 stays 0 to within the
    round-off of the largest component (eps |y1|, 4e-19), however loosely Newton's
    method converged, since a simplified Newton update with the exact Jacobian keeps a
    linear invariant. A Jacobian off by 1e-9 relative (as finite differences give)
    drifts 10 to 75 times further."""
    y0 = jnp.array([1.76e-3, 0.0, 0.0, 0.0])
    ys = diffrax.diffeqsolve(
        diffrax.ODETerm(e5),
        din.RadauIIA5(reuse_jacobian=reuse_jacobian),
        0.0,
        1e13,
        None,
        y0,
        stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1.11e-24),
        saveat=diffrax.SaveAt(ts=jnp.geomspace(1e-4, 1e13, 60)),
        max_steps=10_000,
    ).ys
    drift = np.max(np.abs(np.asarray(ys[:, 1] - ys[:, 2] - ys[:, 3])))
    assert drift <= np.finfo(np.float64).eps * 1.76e-3
    # Not a solution that stayed at zero: the small components carry the invariant.
    assert np.max(np.asarray(ys[:, 1])) > 1e-11
