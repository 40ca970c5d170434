"""`PredictiveController`: its formula against SciPy's and a naive reference, its
step counts against `diffrax.PIDController`, and `vmap` over traced tolerances."""

import diffrax
import diffrax_implicit_node as din
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from scipy.integrate._ivp.radau import predict_factor


ERROR_ORDER = 4


def _drive(controller, errors, dt0):
    """Feeds the controller a step of scaled error `e` for each `e` in `errors`
    (one component, atol 1, rtol 0, RMS norm: the scaled error is `|y_error|`);
    returns the (t0, t1) it proposes after each."""
    y = jnp.zeros(1)
    t0 = jnp.array(0.0)
    term = diffrax.ODETerm(lambda t, y, args: -y)
    # Unused: `dt0` is given, so the controller need not evaluate the vector field.
    func = lambda terms, t, y, args: terms.vf(t, y, args)
    t1, state = controller.init(term, t0, t0, y, dt0, None, func, ERROR_ORDER)
    proposals = []
    for error in errors:
        _, t0, t1, _, state, _ = controller.adapt_step_size(
            t0, t1, y, y, None, jnp.array([error]), ERROR_ORDER, state
        )
        proposals.append((float(t0), float(t1)))
    return proposals


def _naive(errors, dt0, safety=0.9, factormin=0.2, factormax=8.0, hold_max=1.2):
    """RADAU5's step-size selection (Hairer & Wanner IV.8), written out."""
    t, h = 0.0, dt0
    accepted_h = accepted_error = None
    rejected = False
    proposals = []
    for error in errors:
        standard = safety * error ** (-1 / ERROR_ORDER)
        if error <= 1:
            factor = standard
            if accepted_h is not None:
                growth = (h / accepted_h) * (accepted_error / error) ** (
                    1 / ERROR_ORDER
                )
                factor = min(factor, standard * growth)
            factor = min(max(factor, factormin), factormax)
            if rejected:
                factor = min(factor, 1.0)
            if 1 <= factor <= hold_max:
                factor = 1.0
            accepted_h, accepted_error, rejected = h, max(error, 1e-2), False
            t += h
        else:
            factor = min(max(standard, factormin), safety)
            rejected = True
        h *= factor
        proposals.append((t, t + h))
    return proposals


def test_accepted_steps_match_scipy_predict_factor():
    # Errors for which no clipping or holding applies, so the factor is SciPy's.
    errors = [0.1, 0.02, 0.3, 0.9, 0.05, 0.7, 0.01, 0.2]
    proposals = _drive(din.PredictiveController(rtol=0.0, atol=1.0), errors, 0.1)
    t, h, previous_h, previous_error = 0.0, 0.1, None, None
    for error, (t0, t1) in zip(errors, proposals):
        factor = 0.9 * predict_factor(h, previous_h, error, previous_error)
        assert not 1 <= factor <= 1.2
        t, previous_h, previous_error, h = t + h, h, error, h * factor
        np.testing.assert_allclose([t0, t1], [t, t + h], rtol=1e-13)


def test_hold_band_rejections_and_clipping_match_naive_reference():
    # Holds (0.4 after 0.5 gives a factor of ~1.1), a failed step (inf), rejections,
    # growth clipped at factormax (1e-9), and a step after a rejection.
    errors = [0.5, 0.4, 0.38, 3.0, 0.2, np.inf, 0.6, 1e-9, 1e-9, 0.8, 1.5, 0.1]
    proposals = _drive(din.PredictiveController(rtol=0.0, atol=1.0), errors, 0.1)
    expected = _naive(errors, 0.1)
    np.testing.assert_allclose(proposals, expected, rtol=1e-13)
    step_sizes = np.diff(np.array(expected), axis=1)[:, 0]
    # The hold band was exercised (up to the round-off of t0 + h - t0).
    assert step_sizes[1] == pytest.approx(step_sizes[0], rel=1e-14)


def _hires(t, y, args):
    del t, args
    y1, y2, y3, y4, y5, y6, y7, y8 = y
    return jnp.stack(
        [
            -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
            1.71 * y1 - 8.75 * y2,
            -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4,
            -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
            280.0 * y6 * y8 - 1.81 * y7,
            -280.0 * y6 * y8 + 1.81 * y7,
        ]
    )


def _van_der_pol(t, y, args):
    del t, args
    return jnp.stack([y[1], 1e2 * ((1 - y[0] ** 2) * y[1] - y[0])])


_PROBLEMS = {
    "hires": (_hires, 321.8122, [1.0, 0, 0, 0, 0, 0, 0, 0.0057], 1e-3),
    "van der Pol": (_van_der_pol, 2.0, [2.0, 0.0], 1.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_PROBLEMS))
def test_fewer_steps_than_pid(name):
    """At each tolerance: fewer attempted steps (accepted and rejected) than
    `PIDController`, mostly by avoiding rejections; on HIRES also at an error at most
    twice its. (On this van der Pol problem the predictive controller's error at the
    same tolerance is up to ~4 times PID's, whose many rejected steps leave it with
    smaller accepted ones; the error at t1 does not fall monotonically with the
    tolerance there, so matched-error interpolation says little.)"""
    field, t1, y0, scale = _PROBLEMS[name]
    y0 = np.array(y0)
    reference = scipy.integrate.solve_ivp(
        lambda t, y: np.asarray(field(t, jnp.asarray(y), None)),
        (0, t1),
        y0,
        method="Radau",
        rtol=1e-12,
        atol=1e-12 * scale,
    ).y[:, -1]

    def make(controller_cls):
        @jax.jit
        @jax.vmap
        def solve(rtol):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(field),
                din.RadauIIA5(),
                0.0,
                t1,
                None,
                jnp.asarray(y0),
                stepsize_controller=controller_cls(rtol=rtol, atol=rtol * scale),
                max_steps=10_000,
            )
            relative = jnp.abs(sol.ys[-1] - reference) / (jnp.abs(reference) + scale)
            return jnp.max(relative), sol.stats["num_steps"]

        return solve

    rtols = jnp.array([1e-5, 1e-7])
    pid_errors, pid_steps = make(diffrax.PIDController)(rtols)
    errors, steps = make(din.PredictiveController)(rtols)
    message = f"steps {steps} vs PID {pid_steps}, errors {errors} vs PID {pid_errors}"
    assert np.all(steps <= pid_steps), message
    if name == "hires":
        assert np.all(errors <= 2 * pid_errors), message


def test_vmap_over_traced_tolerances_matches_separate_solves():
    def solve(rtol):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(
                lambda t, y, args: jnp.stack([-1e3 * (y[0] - jnp.cos(t)), -y[1]])
            ),
            din.RadauIIA5(),  # its Newton tolerances come from the controller
            0.0,
            2.0,
            None,
            jnp.array([0.0, 1.0]),
            stepsize_controller=din.PredictiveController(rtol=rtol, atol=rtol),
        )
        return sol.ys[-1], sol.stats["num_steps"]

    rtols = jnp.array([1e-4, 1e-7])
    batched_ys, batched_steps = jax.jit(jax.vmap(solve))(rtols)
    for k, rtol in enumerate((1e-4, 1e-7)):
        ys, steps = solve(rtol)
        np.testing.assert_allclose(batched_ys[k], ys, rtol=1e-12, atol=1e-14)
        assert batched_steps[k] == steps
    assert batched_steps[1] > batched_steps[0]
