"""Shared test utilities: problems with known solutions, and an independent, naive
implementation of one implicit Runge--Kutta step to compare the solvers against."""

import contextlib
import functools

import diffrax
import diffrax_implicit_node as din
import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import scipy.linalg
import scipy.special


SOLVERS = (din.BackwardEuler, din.Trapezoid, din.RadauIIA3, din.RadauIIA5)
ORDERS = {din.BackwardEuler: 1, din.Trapezoid: 2, din.RadauIIA3: 3, din.RadauIIA5: 5}

# Tableaus written out independently of the package, from the textbooks.
_S6 = np.sqrt(6)
TABLEAUS = {
    din.BackwardEuler: (np.array([1.0]), np.array([[1.0]])),
    din.Trapezoid: (np.array([0.0, 1.0]), np.array([[0.0, 0.0], [0.5, 0.5]])),
    din.RadauIIA3: (
        np.array([1 / 3, 1]),
        np.array([[5 / 12, -1 / 12], [3 / 4, 1 / 4]]),
    ),
    din.RadauIIA5: (
        np.array([(4 - _S6) / 10, (4 + _S6) / 10, 1]),
        np.array(
            [
                [(88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225],
                [(296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225],
                [(16 - _S6) / 36, (16 + _S6) / 36, 1 / 9],
            ]
        ),
    ),
}


@contextlib.contextmanager
def without_runtime_type_checks():
    """Turns off jaxtyping's (and so beartype's) checks of the package's annotations.

    For tests of the package's own checks of arguments that its annotations already
    exclude: under the test suite's runtime type checking the annotation would reject
    them first, while a user without it gets the package's own error message.
    """
    disabled = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", disabled)


def _radau_iia_tableau(stages):
    """Radau IIA from SciPy's Gauss--Jacobi nodes (the zeros of P_(s-1)^(1,0) on
    [0, 1], and 1) and the conditions C(s): a c^(k-1) = c^k / k, in float64."""
    interior, _ = scipy.special.roots_jacobi(stages - 1, 1, 0)
    c = np.append((1 + interior) / 2, 1.0)
    powers = np.vander(c, stages, increasing=True)
    integrals = powers * c[:, None] / np.arange(1, stages + 1)
    return c, np.linalg.solve(powers.T, integrals.T).T


TABLEAUS[din.RadauIIA9] = _radau_iia_tableau(5)
TABLEAUS[din.RadauIIA13] = _radau_iia_tableau(7)
TABLEAUS[din.LobattoIIIC4] = (
    np.array([0.0, 0.5, 1.0]),
    np.array([[1 / 6, -1 / 3, 1 / 6], [1 / 6, 5 / 12, -1 / 12], [1 / 6, 2 / 3, 1 / 6]]),
)


def tight(solver_cls, tol=1e-11):
    """A solver whose Newton iteration converges far below the discretisation error."""
    return solver_cls(
        root_finder=din.SimplifiedNewton(rtol=tol, atol=tol), root_find_max_steps=30
    )


# A stiff linear system with eigenvalues -1, -10, -1000 (nondiagonal).
_Q = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
LINEAR_MATRIX = _Q @ np.diag([-1.0, -10.0, -1000.0]) @ np.linalg.inv(_Q)


def linear_vector_field(t, y, args):
    del t, args
    return jnp.asarray(LINEAR_MATRIX, dtype=y.dtype) @ y


def linear_exact(t, y0):
    return scipy.linalg.expm(LINEAR_MATRIX * t) @ np.asarray(y0)


def kaps_vector_field(t, y, stiffness):
    """Kaps' problem: exact solution y1 = exp(-2t), y2 = exp(-t) from (1, 1), for every
    `stiffness` (the classical form has 1000)."""
    del t
    y1, y2 = y
    return jnp.stack([-(2 + stiffness) * y1 + stiffness * y2**2, y1 - y2 - y2**2])


def kaps_exact(t):
    return np.array([np.exp(-2 * t), np.exp(-t)])


class NeuralField(eqx.Module):
    """A small, stiff neural vector field: -diag(rates) y + MLP(t, y)."""

    rates: jax.Array
    mlp: eqx.nn.MLP

    def __init__(self, key, size=2):
        self.rates = jnp.array([100.0, 1.0, 10.0][:size])
        self.mlp = eqx.nn.MLP(size + 1, size, 8, 2, activation=jnp.tanh, key=key)

    def __call__(self, t, y, args):
        del args
        return -self.rates * y + self.mlp(jnp.concatenate([jnp.atleast_1d(t), y]))


def call_field(t, y, field):
    return field(t, y, None)


@functools.cache
def fixed_step_solve(solver_cls, vector_field):
    """A compiled fixed-step solve, reused across step sizes (dt0 is traced)."""

    @jax.jit
    def solve(t0, t1, dt0, y0, args, ts=None):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            tight(solver_cls),
            t0,
            t1,
            dt0,
            y0,
            args=args,
            saveat=diffrax.SaveAt(t1=True) if ts is None else diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.ConstantStepSize(),
            max_steps=4096,
        ).ys

    return solve


def naive_step(solver_cls, vector_field, t0, y0, h, args, iterations=12):
    """One step of the Runge--Kutta method in stage-derivative form, with full Newton
    on the whole `s·n` system and a fresh `jax.jacfwd` Jacobian every iteration."""
    c, a = (jnp.asarray(x) for x in TABLEAUS[solver_cls])
    stages, size = len(c), y0.size

    def residual(k_flat):
        k = k_flat.reshape(stages, size)
        stage_values = y0[None] + h * a @ k
        return (
            k - jax.vmap(vector_field, (0, 0, None))(t0 + c * h, stage_values, args)
        ).ravel()

    def newton_iteration(_, k_flat):
        jacobian = jax.jacfwd(residual)(k_flat)
        return k_flat - jnp.linalg.solve(jacobian, residual(k_flat))

    k_flat = jax.lax.fori_loop(
        0, iterations, newton_iteration, jnp.zeros(stages * size, dtype=y0.dtype)
    )
    return y0 + h * a[-1] @ k_flat.reshape(stages, size)


def one_step(solver, vector_field, t0, t1, y0, args):
    term = diffrax.ODETerm(vector_field)
    state = solver.init(term, t0, t1, y0, args)
    return solver.step(term, t0, t1, y0, args, state, made_jump=False)


def slope(steps, errors):
    """Least-squares slope of log(error) against log(1 / steps)."""
    return np.polyfit(np.log(1 / np.asarray(steps)), np.log(np.asarray(errors)), 1)[0]
