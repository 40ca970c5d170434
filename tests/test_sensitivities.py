import diffrax_implicit_node as din
import diffrax_implicit_node._optimise as din_optimise
import diffrax_implicit_node._sensitivities as din_sensitivities
import diffrax_implicit_node._windows as din_windows
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from test_pinet import random_pinet


def nonlinear2d_library():
    """The library of y1' = -1002 y1 + 1000 y2², y2' = y1 - y2 - y2², perturbed."""
    library = din.PolynomialLibrary(2, 2)
    # Monomials: 1, y1, y2, y1², y1 y2, y2².
    truth = jnp.array(
        [[0.0, -1002.0, 0.0, 0.0, 0.0, 1000.0], [0.0, 1.0, -1.0, 0.0, 0.0, -1.0]]
    )
    noise = 0.1 * jr.normal(jr.key(0), truth.shape)
    return eqx.tree_at(lambda m: m.coefficients, library, truth + noise)


def forcing(t, y, args):
    return jnp.stack([jnp.cos(t), -t * jnp.ones_like(t)]) * args


def small_residuals(field, solver):
    """A few short windows on the stiff transient, with their own numbers of steps
    (as `steps_per_interval="auto"` leaves them) and one padding window of weight 0;
    the observed ends are arbitrary, as the Jacobian does not depend on them."""
    t0 = jnp.array([0.0, 0.01, 0.03, 0.0])
    windows = din_windows.Windows(
        t0=t0,
        t1=t0 + jnp.array([0.01, 0.02, 0.01, 0.01]),
        y0=1.0 + 0.2 * jr.normal(jr.key(1), (4, 2)),
        y1=1.0 + 0.2 * jr.normal(jr.key(2), (4, 2)),
        steps=jnp.array([2, 1, 3, 2]),
        weight=jnp.array([1.0, 1.0, 1.0, 0.0]),
    )
    trainable, frozen = eqx.partition(field, eqx.is_inexact_array)
    residuals = din_windows.Residuals(
        frozen, windows, jnp.array([2.0, 0.5]), solver, 3, args=jnp.array(3.0)
    )
    return residuals, trainable


def radau(cls):
    return cls(root_finder=din.SimplifiedNewton(rtol=1e-12, atol=1e-12))


@pytest.mark.slow
@pytest.mark.parametrize(
    "field, solver",
    [
        (din.NeuralVectorField(nonlinear2d_library()), radau(din.RadauIIA5)),
        # A known, time-dependent part: the stage times matter.
        (din.NeuralVectorField(nonlinear2d_library(), forcing), radau(din.RadauIIA3)),
        # An explicit first stage.
        (din.NeuralVectorField(nonlinear2d_library()), radau(din.Trapezoid)),
        # Any other model: its parameter derivative by forward mode.
        (
            din.NeuralVectorField(
                eqx.tree_at(
                    lambda m: m.output.weight,
                    random_pinet(2, 2, 2, 3),
                    replace_fn=lambda w: 0.3 * w,
                )
            ),
            radau(din.RadauIIA5),
        ),
    ],
    ids=["radau5-library", "radau3-forced-library", "trapezoid-library", "pinet"],
)
def test_fast_jacobian_equals_jacfwd_through_the_solver(field, solver):
    residuals, trainable = small_residuals(field, solver)
    assert din_sensitivities.supports_sensitivities(solver)
    flat, fn, unflatten = din_optimise.least_squares_problem(residuals, trainable)

    def fast_residuals(x):
        return fn(x, None)[0]

    # The value of the forward derivative is that of the sensitivities' own solves.
    fast_value, _ = jax.jit(
        lambda x: jax.jvp(fast_residuals, (x,), (jnp.ones_like(x),))
    )(flat)
    fast = jax.jit(jax.jacfwd(fast_residuals))(flat)
    slow = jax.jit(jax.jacfwd(lambda x: residuals(unflatten(x))))(flat)
    value = jax.jit(lambda x: residuals(unflatten(x)))(flat)
    assert np.all(np.isfinite(slow)) and np.max(np.abs(slow)) > 0
    assert np.all(fast[-2:] == 0)  # The padding window's rows.
    np.testing.assert_allclose(fast_value, value, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-10 * np.abs(slow).max())


def test_library_parameter_jacobian_is_the_forward_mode_one():
    library = nonlinear2d_library()
    y = jnp.array([0.7, -1.3])
    flat, unflatten = ravel_pytree(library.coefficients)

    def vector_field(library):
        def f(flat):
            coefficients = unflatten(flat)
            field = din.NeuralVectorField(
                eqx.tree_at(lambda m: m.coefficients, library, coefficients)
            )
            return field(jnp.array(0.0), y, None)

        return f

    for library in (library, library.without_terms(np.eye(2, 6, dtype=bool))):
        expected = jax.jacfwd(vector_field(library))(flat)
        structured = din_sensitivities.library_parameter_jacobian(library)(
            jnp.array(0.0), y
        )
        np.testing.assert_array_equal(structured, expected)
    # The removed terms: x0' 1 and x1' x0.
    assert np.all(np.asarray(structured)[:, [0, 7]] == 0)


def test_windows_with_their_own_numbers_of_steps():
    library = nonlinear2d_library()
    field = din.NeuralVectorField(library)
    jacobian = din_sensitivities.library_parameter_jacobian(library)
    t0 = jnp.array([0.0, 0.01, 0.03])
    t1 = t0 + 0.02
    y0 = 1.0 + 0.2 * jr.normal(jr.key(1), (3, 2))
    solver = radau(din.RadauIIA5)

    def sensitivities(steps, max_steps):
        return din_sensitivities.interval_sensitivities(
            field,
            jacobian,
            12,
            t0,
            t1,
            y0,
            steps,
            solver=solver,
            max_steps=max_steps,
            args=None,
        )

    # Equal up to the Newton tolerance (1e-12): a one-step window reuses no
    # Jacobian on its own, but may in a batch whose longest window has 3 steps.
    mixed = sensitivities(jnp.array([1, 3, 2]), 3)
    for window, steps in enumerate([1, 3, 2]):
        same = sensitivities(jnp.full(3, steps), steps)
        np.testing.assert_allclose(mixed.y1[window], same.y1[window], rtol=1e-10)
        scale = np.abs(same.jacobian[window]).max()
        np.testing.assert_allclose(
            mixed.jacobian[window], same.jacobian[window], atol=1e-10 * scale
        )
    assert np.all(mixed.succeeded)
    # The end states are those of `diffeqsolve` in as many steps.
    for window, steps in enumerate([1, 3, 2]):
        y1, _ = din.interval_predictions(
            field, t0, t1, y0, solver=solver, steps_per_interval=steps
        )
        np.testing.assert_allclose(mixed.y1[window], y1[window], rtol=1e-10)
