"""Reusing Jacobians across steps: it must save work and never change the answer
beyond the tolerances, nor the gradients."""

import collections

import diffrax
import diffrax_implicit_node as din
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate


def _robertson(y, xp=jnp):
    return xp.stack(
        [
            -0.04 * y[0] + 1e4 * y[1] * y[2],
            0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
            3e7 * y[1] ** 2,
        ]
    )


def _counting_jacobians(fn, counter):
    """`fn(t, y, args)`, counting the Jacobians taken of it: a Jacobian is one
    (vmapped) forward-mode derivative, so one call of the JVP rule."""

    @jax.custom_jvp
    def counted(t, y, args):
        return fn(t, y, args)

    @counted.defjvp
    def counted_jvp(primals, tangents):
        t, y, args = primals
        jax.debug.callback(lambda: counter.update(["jacobians"]))
        return jax.jvp(lambda y: fn(t, y, args), (y,), (tangents[1],))

    return counted


def test_adaptive_reuse_saves_jacobians_not_accuracy():
    counter = collections.Counter()
    field = _counting_jacobians(lambda t, y, args: _robertson(y), counter)
    t1, y0 = 1e3, jnp.array([1.0, 0.0, 0.0])
    jacobians, finals = {}, {}
    for reuse in (True, False):
        counter.clear()
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            din.RadauIIA5(reuse_jacobian=reuse),
            0.0,
            t1,
            1e-6,
            y0,
            stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10),
        )
        assert solution.ys is not None
        jacobians[reuse] = counter["jacobians"]
        finals[reuse] = np.asarray(solution.ys[-1])
    # One Jacobian per attempted step without reuse (242 here); 47 with it.
    assert jacobians[True] < jacobians[False] / 4
    reference = scipy.integrate.solve_ivp(
        lambda t, y: _robertson(y, np),
        (0, t1),
        np.asarray(y0),
        method="Radau",
        rtol=1e-12,
        atol=1e-14,
    ).y[:, -1]
    for final in finals.values():
        np.testing.assert_allclose(final, reference, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(finals[True], finals[False], rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("solver_cls", (din.BackwardEuler, din.RadauIIA5))
def test_constant_steps_keep_jacobian(solver_cls):
    # Newton's method converges at once on a linear problem, so one Jacobian serves
    # every step.
    counter = collections.Counter()
    matrix = jnp.array([[-1000.0, 1.0], [0.0, -1.0]])
    field = _counting_jacobians(lambda t, y, args: matrix @ y, counter)
    y0 = jnp.array([1.0, 2.0])
    solver = solver_cls(root_finder=din.SimplifiedNewton(rtol=1e-10, atol=1e-10))
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        0.0,
        1.0,
        0.05,
        y0,
        stepsize_controller=diffrax.ConstantStepSize(),
    )
    assert counter["jacobians"] == 1
    unshared = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver_cls(
            root_finder=din.SimplifiedNewton(rtol=1e-10, atol=1e-10),
            reuse_jacobian=False,
        ),
        0.0,
        1.0,
        0.05,
        y0,
        stepsize_controller=diffrax.ConstantStepSize(),
    )
    assert solution.ys is not None and unshared.ys is not None
    np.testing.assert_allclose(solution.ys, unshared.ys, rtol=1e-12, atol=1e-14)


def _solver():
    return din.RadauIIA5(root_finder=din.SimplifiedNewton(rtol=1e-10, atol=1e-10))


def _mild(t, y, args):
    return -y + 0.1 * jnp.sin(y)


def _stiff(t, y, stiffness):
    return -stiffness * y + 0.1 * jnp.sin(y)


def _stiff_step(y0, stiffness, previous_field):
    """One step of `_stiff` from 0.1 to 0.2, after a first step of `previous_field`
    (both from `y0`: only the solver state passes from one to the other)."""
    solver = _solver()
    # (`init` prepares the first step of its term: without a previous field, the
    # stiff one, whose first step from `y0` is the step below.)
    first_field = _stiff if previous_field is None else previous_field
    state = solver.init(diffrax.ODETerm(first_field), 0.0, 0.1, y0, stiffness)
    if previous_field is not None:
        _, _, _, state, _ = solver.step(
            diffrax.ODETerm(previous_field), 0.0, 0.1, y0, stiffness, state, False
        )
    y1, _, _, state, result = solver.step(
        diffrax.ODETerm(_stiff), 0.1, 0.2, y0, stiffness, state, False
    )
    return y1, result, state


@pytest.mark.slow
def test_stale_jacobian_is_refreshed_not_failed():
    # After a step of a mild problem, Newton's method converged fast: its Jacobian is
    # kept. On the stiff step that follows it is far off, and Newton's method with it
    # diverges: the step must be retried at once with a fresh Jacobian, not failed.
    y0, stiffness = jnp.array([0.5, -0.3]), jnp.array(1e4)
    step = jax.jit(_stiff_step, static_argnums=2)
    y1, result, state = step(y0, stiffness, _mild)
    assert result == diffrax.RESULTS.successful
    fresh_y1, fresh_result, _ = step(y0, stiffness, None)
    assert fresh_result == diffrax.RESULTS.successful
    np.testing.assert_allclose(y1, fresh_y1, rtol=1e-9, atol=1e-12)
    # The step keeps the fresh Jacobian (times h = 0.1), not the stale one.
    np.testing.assert_allclose(
        state.hjac, 0.1 * jnp.diag(-stiffness + 0.1 * jnp.cos(y0)), rtol=1e-12
    )

    # Its gradients are those of the step map.
    def loss(y0, stiffness, previous_field):
        return jnp.sum(_stiff_step(y0, stiffness, previous_field)[0] ** 2)

    grads = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(y0, stiffness, _mild)
    fresh_grads = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(y0, stiffness, None)
    for ours, fresh in zip(grads, fresh_grads):
        np.testing.assert_allclose(ours, fresh, rtol=1e-7, atol=1e-14)
    eps = 1e-3
    finite_difference = (
        loss(y0, stiffness + eps, None) - loss(y0, stiffness - eps, None)
    ) / (2 * eps)
    assert float(grads[1]) == pytest.approx(float(finite_difference), rel=1e-5)


@pytest.mark.slow
def test_vmapped_reuse_matches_one_by_one():
    # Under vmap the batch shares the decisions to reuse (here: one element needs a
    # fresh Jacobian, the other could keep its own); each answer must be its own.
    y0s = jnp.array([[0.5, -0.3], [2.0, 1.0]])
    stiffnesses = jnp.array([1e4, 1.0])

    def two_steps(y0, stiffness):
        return _stiff_step(y0, stiffness, _mild)[0]

    batched = jax.vmap(two_steps)(y0s, stiffnesses)
    for y0, stiffness, y1 in zip(y0s, stiffnesses, batched):
        np.testing.assert_allclose(y1, two_steps(y0, stiffness), rtol=1e-9)
