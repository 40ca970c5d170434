"""AdaptiveRadau: Radau IIA of order 5, 9 or 13, chosen per step."""

import collections

import diffrax
import diffrax_implicit_node as din
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from helpers import kaps_vector_field, linear_exact, linear_vector_field


ORDERS = (5, 9, 13)


class _CountingRadau(din.AdaptiveRadau):
    """Counts, on the host, the step attempts made at each order."""

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        out = super().step(terms, t0, t1, y0, args, solver_state, made_jump)
        jax.debug.callback(
            lambda method: _ATTEMPTS.update([ORDERS[int(method)]]),
            solver_state.method,
        )
        return out


_ATTEMPTS: collections.Counter = collections.Counter()


def _attempts(fn, *args) -> collections.Counter:
    _ATTEMPTS.clear()
    jax.block_until_ready(fn(*args))
    jax.effects_barrier()
    return collections.Counter(_ATTEMPTS)


def _linear_solve(solver, ts):
    def solve(rtol):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(linear_vector_field),
            solver,
            0.0,
            float(ts[-1]),
            None,
            jnp.array([1.0, 0.5, -0.25]),
            saveat=diffrax.SaveAt(ts=jnp.asarray(ts)),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol),
            max_steps=10_000,
        ).ys

    return solve


def test_order_rises_and_stays_accurate_on_linear_problem():
    # Newton's method is exact on a linear problem, so the order may rise at once;
    # the dense output across the order changes must stay accurate.
    ts = np.linspace(0.0, 5.0, 23)
    solve = jax.jit(_linear_solve(_CountingRadau(), ts))
    attempts = _attempts(solve, 1e-10)
    assert attempts[13] > attempts[5] > 0, attempts
    ys = np.asarray(solve(1e-10))
    exact = np.stack([linear_exact(t, [1.0, 0.5, -0.25]) for t in ts])
    assert np.max(np.abs(ys - exact)) < 1e-8


def _vdp(t, y, args):
    del t, args
    return jnp.stack([y[1], 1000.0 * (1 - y[0] ** 2) * y[1] - y[0]])


def _vdp_numpy(t, y):
    return np.array([y[1], 1000.0 * (1 - y[0] ** 2) * y[1] - y[0]])


@pytest.fixture(scope="module")
def vdp_solve():
    """van der Pol (mu = 1000) through its first relaxation jump, with a traced
    tolerance: one compilation for all tolerances."""

    def solve(rtol):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(_vdp),
            _CountingRadau(),
            0.0,
            1000.0,
            None,
            jnp.array([2.0, 0.0]),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol),
            max_steps=100_000,
        ).ys[-1]

    return jax.jit(solve)


@pytest.mark.slow
def test_order_follows_tolerance_on_nonlinear_problem(vdp_solve):
    reference = scipy.integrate.solve_ivp(
        _vdp_numpy, (0.0, 1000.0), [2.0, 0.0], method="Radau", rtol=1e-12, atol=1e-12
    ).y[:, -1]
    loose = _attempts(vdp_solve, 1e-5)
    tight = _attempts(vdp_solve, 1e-10)
    # Loose: steps limited by Newton's convergence, which stays slow: order 5
    # (almost) throughout. Tight: small steps on which Newton's method converges
    # at once, and the high orders take most of them.
    assert loose[5] > 0.9 * loose.total(), loose
    assert tight[9] + tight[13] > 0.5 * tight.total(), tight
    for rtol in (1e-5, 1e-10):
        error = np.max(
            np.abs(np.asarray(vdp_solve(rtol)) - reference) / np.abs(reference)
        )
        assert error < 1e3 * rtol


@pytest.mark.slow
def test_fixed_order_equals_fixed_order_solver():
    ts = np.linspace(0.0, 2.0, 5)
    adaptive = jax.jit(_linear_solve(din.AdaptiveRadau(max_order=5), ts))(1e-8)
    fixed = jax.jit(_linear_solve(din.RadauIIA5(), ts))(1e-8)
    np.testing.assert_allclose(adaptive, fixed, rtol=1e-13, atol=1e-15)


def test_error_rescaled_to_controller_order():
    """The controller's scaled error `r` becomes `r^(q₀/q)`: accepts the same steps,
    and its fixed exponent `1/q₀` then gives `r^(-1/q)`."""
    solver = din.AdaptiveRadau(root_finder=din.SimplifiedNewton(rtol=1e-6, atol=1e-9))
    y0 = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3e-4)}
    y1 = {"a": jnp.array([1.1, -1.5]), "b": jnp.array(2e-4)}
    for size in (1e-9, 1e-6, 1e-3):
        error = {"a": jnp.array([3.0, -1.0]) * size, "b": jnp.array(2.0) * size}

        def scaled(error):
            leaves = jax.tree.map(
                lambda e, a, b: e / (1e-9 + 1e-6 * jnp.maximum(abs(a), abs(b))),
                error,
                y0,
                y1,
            )
            return float(
                jnp.sqrt(
                    jnp.mean(
                        jnp.concatenate([x.ravel() for x in jax.tree.leaves(leaves)])
                        ** 2
                    )
                )
            )

        for exponent in (1.0, 4 / 6, 4 / 8):
            rescaled = solver._error_for_controller(y0, y1, error, jnp.array(exponent))
            assert scaled(rescaled) == pytest.approx(
                scaled(error) ** exponent, rel=1e-12
            )


def _jaxpr_switches(jaxpr, branches: int) -> int:
    """How many `cond`s with `branches` branches a jaxpr holds, at any depth."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond" and len(eqn.params["branches"]) == branches:
            count += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += _jaxpr_switches(sub.jaxpr, branches)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += _jaxpr_switches(sub, branches)
    return count


@pytest.mark.slow
def test_vmap_shares_the_order():
    ts = np.array([0.0, 5.0])
    solve = _linear_solve(din.AdaptiveRadau(), ts)
    rtols = jnp.array([1e-10, 1e-6])
    batched = jax.jit(jax.vmap(solve))
    # The order stays a real switch under vmap: one method per step, not all three.
    assert _jaxpr_switches(jax.make_jaxpr(jax.vmap(solve))(rtols).jaxpr, 3) == 1
    ys = np.asarray(batched(rtols))[:, -1]
    exact = linear_exact(5.0, [1.0, 0.5, -0.25])
    one_by_one = np.stack([np.asarray(jax.jit(solve)(rtol))[-1] for rtol in rtols])
    for y, single, rtol in zip(ys, one_by_one, rtols):
        assert np.max(np.abs(y - exact)) < 100 * rtol
        assert np.max(np.abs(y - single)) < 100 * rtol


@pytest.mark.slow
def test_gradients_match_finite_differences():
    def loss(stiffness, y0):
        y1 = diffrax.diffeqsolve(
            diffrax.ODETerm(kaps_vector_field),
            _CountingRadau(
                root_finder=din.SimplifiedNewton(rtol=1e-12, atol=1e-12),
                root_find_max_steps=30,
            ),
            0.0,
            1.0,
            0.04,
            y0,
            args=stiffness,
            stepsize_controller=diffrax.ConstantStepSize(),
        ).ys[-1]
        return jnp.sum(jnp.sin(y1) * jnp.array([1.0, -2.0]))

    stiffness, y0 = jnp.array(20.0), jnp.array([0.9, 1.2])
    compiled = jax.jit(loss)
    attempts = _attempts(compiled, stiffness, y0)
    assert attempts[9] + attempts[13] > 0, attempts
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(stiffness, y0)
    eps = 1e-6
    for direction in ((1.0, [0.0, 0.0]), (0.0, [1.0, 0.0]), (0.0, [0.3, -1.0])):
        ds, dy = jnp.array(direction[0]), jnp.array(direction[1])
        finite_difference = (
            compiled(stiffness + eps * ds, y0 + eps * dy)
            - compiled(stiffness - eps * ds, y0 - eps * dy)
        ) / (2 * eps)
        directional = grads[0] * ds + jnp.vdot(grads[1], dy)
        assert float(directional) == pytest.approx(
            float(finite_difference), rel=1e-6, abs=1e-9
        )


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="among"):
        din.AdaptiveRadau(max_order=7)
    with pytest.raises(ValueError, match="must not exceed"):
        din.AdaptiveRadau(min_order=13, max_order=9)
    with pytest.raises(ValueError, match="SimplifiedNewton"):
        din.AdaptiveRadau(root_finder=diffrax.VeryChord(rtol=1e-6, atol=1e-6))


def test_diffrax_citation_prints_the_method(capsys):
    diffrax.citation(solver=din.AdaptiveRadau())
    printed = capsys.readouterr().out
    ours = printed[printed.index("the AdaptiveRadau solver") :]
    for key in ("ehle1969pade", "hairer1999stiff"):
        assert f"{{{key}," in ours


def _lu_calls(jaxpr: jax.extend.core.ClosedJaxpr) -> int:
    """The LAPACK LU factorisations in `jaxpr`, sub-jaxprs included."""
    count = 0
    for eqn in jaxpr.jaxpr.eqns:
        count += eqn.primitive.name == "lu"
        for param in eqn.params.values():
            params = param if isinstance(param, (tuple, list)) else (param,)
            for sub in params:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += _lu_calls(sub)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += _lu_calls(jax.extend.core.ClosedJaxpr(sub, ()))
    return count


def test_init_prepares_only_the_first_method():
    # The other methods' first steps would be independent batched LAPACK calls, which
    # can hang XLA:CPU (docs/further_details/xla_cpu_hang.md), and wasted work.
    term = diffrax.ODETerm(linear_vector_field)
    y0 = jnp.array([1.0, 0.5, -0.25])

    def init(solver):
        return solver.init(term, jnp.asarray(0.0), jnp.asarray(0.1), y0, None)

    newton = din.SimplifiedNewton(rtol=1e-8, atol=1e-8)  # Else from the controller.
    adaptive = din.AdaptiveRadau(root_finder=newton)
    state = init(adaptive)
    assert [bool(s.jacobian_current) for s in state.collocation] == [
        True,
        False,
        False,
    ]
    first = _lu_calls(jax.make_jaxpr(lambda: init(din.RadauIIA5(root_finder=newton)))())
    assert first == 2  # One real and one complex Newton matrix.
    assert _lu_calls(jax.make_jaxpr(lambda: init(adaptive))()) == first
