"""Solvers as data: `CollocationTableau` and the methods defined only by one —
Lobatto IIIC of order 4 and Radau IIA of orders 9 and 13."""

import diffrax
import diffrax_implicit_node as din
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
import scipy.linalg
from helpers import (
    call_field,
    fixed_step_solve,
    kaps_exact,
    kaps_vector_field,
    naive_step,
    NeuralField,
    one_step,
    slope,
    TABLEAUS,
    tight,
)


NEW_SOLVERS = (din.LobattoIIIC4, din.RadauIIA9, din.RadauIIA13)


# --- CollocationTableau -------------------------------------------------------------


@pytest.mark.parametrize(
    "c, a, message",
    [
        ([[1.0]], [[1.0]], "`c` must be a non-empty vector"),
        ([0.5, 1.0], [[0.5, 0.0]], "`a` must be square"),
        ([0.5, 1.0], [[0.5, 0.0, 0.0], [0.5, 0.5, 0.0]], "`a` must be square"),
        ([1.0, 0.5], [[1.0, 0.0], [0.25, 0.25]], "distinct and increasing"),
        ([0.5, 0.9], [[0.5, 0.0], [0.45, 0.45]], "stiffly accurate"),
        ([0.5, 1.0], [[0.5, 0.0], [0.5, 0.4]], "row sums"),
        ([0.5, 1.0], [[0.25, 0.25], [0.5, 0.5]], "must be invertible"),
        ([0.0, 0.5, 1.0], [[0, 0, 0], [0, 0.5, 0], [0, 1, 0]], "must be invertible"),
        ([1.0], [[np.nan]], "finite"),
    ],
)
def test_tableau_rejects_bad_coefficients(c, a, message):
    with pytest.raises(ValueError, match=message):
        din.CollocationTableau(c=np.array(c), a=np.array(a), order=1)


def test_tableau_rejects_bad_error_filter():
    # Radau IIA3's A⁻¹ has only a complex pair: no default filter shift.
    c, a = TABLEAUS[din.RadauIIA3]
    with pytest.raises(ValueError, match="give `error_filter_shift`"):
        din.CollocationTableau(c=c, a=a, order=3)
    with pytest.raises(ValueError, match="must be positive"):
        din.CollocationTableau(c=c, a=a, order=3, error_filter_shift=-1.0)
    # The trapezoidal rule's explicit first stage has no embedded estimate.
    c, a = TABLEAUS[din.Trapezoid]
    with pytest.raises(ValueError, match="every stage implicit"):
        din.CollocationTableau(c=c, a=a, order=2)


@pytest.mark.parametrize("solver_cls", (din.RadauIIA9, din.RadauIIA13))
def test_radau_tableau_matches_independent_computation(solver_cls):
    # 50-digit coefficients against SciPy's Gauss--Jacobi nodes in float64, and the
    # order conditions B(2s - 1) of the quadrature b = a[-1], c.
    tableau = solver_cls.tableau
    c, a = TABLEAUS[solver_cls]
    np.testing.assert_allclose(tableau.c, c, rtol=0, atol=1e-14)
    np.testing.assert_allclose(tableau.a, a, rtol=0, atol=1e-12)
    stages = len(c)
    for k in range(1, 2 * stages):
        assert tableau.a[-1] @ tableau.c ** (k - 1) == pytest.approx(1 / k, abs=1e-14)


@pytest.mark.parametrize("solver_cls", NEW_SOLVERS)
def test_w_transformation_diagonalises(solver_cls):
    # One real eigenvalue and complex pairs: each conjugate stage must reuse its
    # partner's system, and T Λ T⁻¹ must give back A⁻¹.
    tableau = solver_cls.tableau
    eigenvalues = np.array(
        [
            np.conj(tableau.shifts[system]) if conjugate else tableau.shifts[system]
            for system, conjugate in zip(
                tableau.system_of_stage, tableau.conjugate_stage
            )
        ]
    )
    np.testing.assert_allclose(
        tableau.transform @ np.diag(eigenvalues) @ tableau.transform_inv,
        tableau.a_implicit_inv,
        rtol=0,
        atol=1e-11,
    )
    np.testing.assert_allclose(
        np.sort_complex(eigenvalues),
        np.sort_complex(np.linalg.eigvals(np.linalg.inv(TABLEAUS[solver_cls][1]))),
        rtol=1e-10,
    )
    stages = len(tableau.c)
    assert sum(tableau.conjugate_stage) == (stages - 1) // 2
    assert tableau.shifts[tableau.error_filter_system].imag == 0


# --- Convergence and stability -------------------------------------------------------

# y' = M y with eigenvalues -1 ± 10i and -2: few, large steps (h|λ| from 1.2 to 2.5)
# keep the errors of orders 9 and 13 far above round-off.
_Q = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
_BLOCKS = np.array([[-1.0, 10.0, 0.0], [-10.0, -1.0, 0.0], [0.0, 0.0, -2.0]])
_OSCILLATOR = _Q @ _BLOCKS @ np.linalg.inv(_Q)


def _oscillator(t, y, args):
    del t, args
    return jnp.asarray(_OSCILLATOR) @ y


ORDER_STEPS = {
    din.LobattoIIIC4: (16, 32, 64, 128),
    din.RadauIIA9: (12, 16, 24, 32),
    din.RadauIIA13: (8, 12, 16),
}


@pytest.mark.parametrize("solver_cls", NEW_SOLVERS)
def test_convergence_order(solver_cls):
    solve = fixed_step_solve(solver_cls, _oscillator)
    y0 = jnp.array([1.0, 0.5, -1.0])
    t1 = 2.0
    exact = scipy.linalg.expm(_OSCILLATOR * t1) @ np.asarray(y0)
    steps = ORDER_STEPS[solver_cls]
    errors = [
        np.max(np.abs(solve(0.0, t1, t1 / n, y0, None)[-1] - exact)) for n in steps
    ]
    assert min(errors) > 1e-13  # Still above round-off.
    assert slope(steps, errors) == pytest.approx(solver_cls.tableau.order, abs=0.5)


def test_lobatto_iiic4_stability_function():
    step = jax.jit(
        lambda lam: one_step(
            tight(din.LobattoIIIC4),
            lambda t, y, args: jnp.stack(
                [args[0] * y[0] - args[1] * y[1], args[1] * y[0] + args[0] * y[1]]
            ),
            0.0,
            1.0,
            jnp.array([1.0, 0.0]),
            lam,
        )[0]
    )
    for z in (-0.5, -40.0, 2j, -2 + 3j):
        y1 = step((jnp.array(np.real(z)), jnp.array(np.imag(z))))
        expected = (1 + z / 4) / (1 - 3 * z / 4 + z**2 / 4 - z**3 / 24)
        y1_complex = complex(y1[0]) + 1j * float(y1[1])
        np.testing.assert_allclose(y1_complex, expected, rtol=1e-10)


@pytest.mark.parametrize("solver_cls", NEW_SOLVERS)
def test_l_stable(solver_cls):
    y1, *_ = one_step(
        tight(solver_cls), lambda t, y, args: -1e6 * y, 0.0, 1.0, jnp.array([1.0]), None
    )
    # R(-10⁶) = O(10⁻⁶) for an L-stable method; an A-stable one (Gauss, Lobatto
    # IIIA) would give about ±1.
    assert abs(y1[0]) < 1e-5


# --- Against a naive implementation, and gradients ----------------------------------


@pytest.mark.parametrize("solver_cls", NEW_SOLVERS)
def test_single_step_matches_naive_newton(solver_cls):
    field = NeuralField(jax.random.key(0), size=3)
    y0 = jnp.array([0.3, -1.2, 0.7])
    t0, h = 0.2, 0.05
    y1, *_ = one_step(tight(solver_cls, 1e-12), call_field, t0, t0 + h, y0, field)
    reference = naive_step(solver_cls, call_field, t0, y0, h, field)
    np.testing.assert_allclose(y1, reference, rtol=0, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("solver_cls", (din.RadauIIA9, din.RadauIIA13))
def test_gradients_match_finite_differences(solver_cls):
    def loss(params):
        stiffness, y0 = params
        y1 = diffrax.diffeqsolve(
            diffrax.ODETerm(kaps_vector_field),
            tight(solver_cls),
            0.0,
            0.5,
            0.25,
            y0,
            args=stiffness,
            stepsize_controller=diffrax.ConstantStepSize(),
        ).ys[-1]  # pyright: ignore[reportOptionalSubscript]
        return jnp.sum(jnp.sin(y1) * jnp.array([1.0, -2.0]))

    params = (jnp.array(20.0), jnp.array([0.9, 1.2]))
    grads = jax.jit(jax.grad(loss))(params)
    compiled = jax.jit(loss)
    eps = 1e-6
    directions = (
        (jnp.array(1.0), jnp.zeros(2)),
        (jnp.array(0.0), jnp.array([1.0, 0.0])),
        (jnp.array(0.0), jnp.array([0.3, -1.0])),
    )
    for direction in directions:
        plus, minus = (
            jax.tree.map(lambda p, d: p + sign * eps * d, params, direction)
            for sign in (1, -1)
        )
        finite_difference = (compiled(plus) - compiled(minus)) / (2 * eps)
        directional = sum(
            jnp.vdot(g, d)
            for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction))
        )
        assert float(directional) == pytest.approx(
            float(finite_difference), rel=1e-6, abs=1e-9
        )


@pytest.mark.parametrize("solver_cls", NEW_SOLVERS)
def test_adaptive_stiff_kaps(solver_cls):
    # Kaps' problem with stiffness 10⁴ has the exact solution (exp(-2t), exp(-t)).
    rtol = 1e-9
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(kaps_vector_field),
        solver_cls(),
        0.0,
        2.0,
        1e-3,
        jnp.array([1.0, 1.0]),
        args=1e4,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol),
        max_steps=1000,
    )
    assert solution.ys is not None and solution.stats is not None
    error = np.max(np.abs(solution.ys[-1] - kaps_exact(2.0)) / kaps_exact(2.0))
    assert error < 100 * rtol
    assert solution.stats["num_accepted_steps"] < 200


# --- Citations -----------------------------------------------------------------------

CITATIONS = {
    din.BackwardEuler: ("hairer1996solving",),
    din.Trapezoid: ("hairer1993solving",),
    din.RadauIIA3: ("ehle1969pade", "hairer1996solving"),
    din.RadauIIA5: ("ehle1969pade", "hairer1996solving"),
    din.RadauIIA9: ("ehle1969pade", "hairer1999stiff"),
    din.RadauIIA13: ("ehle1969pade", "hairer1999stiff"),
    din.LobattoIIIC4: ("chipman1971astable", "axelsson1972note"),
}


@pytest.mark.parametrize("solver_cls", tuple(CITATIONS))
def test_diffrax_citation_prints_the_method(solver_cls, capsys):
    diffrax.citation(solver=solver_cls())
    printed = capsys.readouterr().out
    ours = printed[printed.index(f"the {solver_cls.__name__} solver") :]
    for key in CITATIONS[solver_cls]:
        assert f"{{{key}," in ours
    # The paper that the learning half follows is not the solvers' origin.
    assert "fronk" not in printed


# --- SimplifiedNewton's statistics ---------------------------------------------------


def test_simplified_newton_reports_its_contraction_rate():
    # x³ + x - 1 = 0 from x = 1: the chord method converges linearly, with the rate
    # |1 - g'(x*) / g'(1)| = |1 - (3x*² + 1) / 4| (x* ≈ 0.6823).
    solution = optx.root_find(
        lambda x, args: x**3 + x - 1,
        din.SimplifiedNewton(rtol=1e-12, atol=1e-12),
        jnp.array(1.0),
        max_steps=100,
    )
    root = 0.6823278038280193
    assert float(solution.value) == pytest.approx(root, abs=1e-10)
    expected_rate = abs(1 - (3 * root**2 + 1) / 4)
    assert float(solution.stats["contraction_rate"]) == pytest.approx(
        expected_rate, rel=1e-2
    )
    assert int(solution.stats["num_steps"]) > 5


def test_simplified_newton_stops_at_the_round_off_of_a_large_root():
    # The root, 0.93, is far larger than the reference 0 that sets the tolerance
    # (the stages of a step from y0 = 0). A residual with a round-off error that does
    # not shrink makes the increments 1e-15 and then 2e-15: no contraction, but only
    # round-off in the root, which must count as converged, not as divergence.
    root = 0.93

    def fn(x, args):
        round_off = jnp.where(x >= root, 1e-15, -1e-15)
        return x - root + lax.stop_gradient(round_off)

    solution = optx.root_find(
        fn,
        din.SimplifiedNewton(rtol=1e-8, atol=1e-8),
        jnp.array(root),
        options=dict(scale_reference=jnp.array(0.0)),
        max_steps=10,
        throw=False,
    )
    assert solution.result == optx.RESULTS.successful
    assert float(solution.value) == pytest.approx(root, abs=1e-14)


# The embedded estimate with s stages is of order s: the estimate of one step scales
# as h^(s+1), Diffrax's `error_order`.
ESTIMATE_STEPS = {
    din.LobattoIIIC4: (0.04, 0.02, 0.01),
    din.RadauIIA9: (0.05, 0.035, 0.025),
    din.RadauIIA13: (0.08, 0.056, 0.04),
}


@pytest.mark.parametrize("solver_cls", NEW_SOLVERS)
def test_error_estimate_order(solver_cls):
    step = jax.jit(
        lambda h: one_step(
            tight(solver_cls, 1e-13),
            _oscillator,
            0.0,
            h,
            jnp.array([1.0, 0.5, -1.0]),
            None,
        )[1]
    )
    sizes = ESTIMATE_STEPS[solver_cls]
    estimates = [float(jnp.max(jnp.abs(step(jnp.array(h))))) for h in sizes]
    assert min(estimates) > 1e-13
    assert slope([1 / h for h in sizes], estimates) == pytest.approx(
        len(solver_cls.tableau.c) + 1, abs=0.3
    )
    assert solver_cls.tableau.error_order == len(solver_cls.tableau.c) + 1
