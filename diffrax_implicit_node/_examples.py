from collections.abc import Callable
from typing import Literal, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import sympy
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Scalar

from ._model import NeuralVectorField
from ._names import learned_from_name, MODEL_NAMES, OPTIMISER_NAMES
from ._symbolic import coefficients
from ._verify import reference_solve


# Table 7 of Fronk & Petzold: the 20 initial conditions of the HIRES study.
# fmt: off
HIRES_INITIAL_CONDITIONS = np.array([
    [0.412503, 0.906411, 0.412933, 0.213609, 0.064925, 0.293734, 0.739312, 0.043381],
    [0.378101, 0.391340, 0.156641, 0.503148, 0.817612, 0.433931, 0.191203, 0.007282],
    [0.153447, 0.071013, 0.257224, 0.455062, 0.594616, 0.367467, 0.079906, 0.047136],
    [1.366815, 0.236463, 0.873612, 0.893106, 0.150143, 0.115366, 0.968644, 0.000806],
    [1.464978, 0.993025, 0.537866, 0.611333, 0.113295, 0.245616, 0.548675, 0.009430],
    [0.174331, 0.570303, 0.497073, 0.406965, 0.047271, 0.616831, 0.686488, 0.012478],
    [0.677526, 0.659252, 0.589131, 0.925035, 0.517411, 0.966685, 0.301191, 0.029454],
    [0.574262, 0.329074, 0.033387, 0.339584, 0.992378, 0.006706, 0.446191, 0.022913],
    [1.065735, 0.518636, 0.758506, 0.998593, 0.455977, 0.483815, 0.030678, 0.004377],
    [0.638101, 0.703107, 0.846135, 0.816864, 0.216076, 0.860064, 0.613366, 0.019588],
    [1.158734, 0.012780, 0.326158, 0.561438, 0.609144, 0.518287, 0.352820, 0.034432],
    [0.949418, 0.460502, 0.961568, 0.157100, 0.282788, 0.075279, 0.806771, 0.040494],
    [1.321282, 0.269435, 0.720024, 0.122634, 0.679448, 0.838694, 0.291664, 0.025704],
    [0.802005, 0.760407, 0.901060, 0.000216, 0.427964, 0.304100, 0.116146, 0.031622],
    [0.486976, 0.815268, 0.606734, 0.081858, 0.338174, 0.582653, 0.571258, 0.014153],
    [0.792132, 0.410891, 0.392693, 0.374081, 0.764888, 0.188351, 0.923021, 0.035935],
    [1.234614, 0.605145, 0.671905, 0.660786, 0.899778, 0.751559, 0.237024, 0.015888],
    [1.082288, 0.150662, 0.070913, 0.270047, 0.362950, 0.731098, 0.485404, 0.049797],
    [0.302551, 0.136653, 0.118964, 0.763691, 0.746139, 0.900857, 0.791212, 0.022706],
    [0.895915, 0.886628, 0.236694, 0.705427, 0.934826, 0.652669, 0.889384, 0.038102],
])
# fmt: on


def _exponential_forcing(t: Scalar, y: Array, args: PyTree) -> Array:
    """The known part of the `linear` example."""
    del args
    return -2000.0 * jnp.exp(-t) * jnp.ones_like(y)


# Each right-hand side is written once, for arrays and for SymPy symbols alike.
def _linear(y):
    (y1,) = y
    return [-1000.0 * y1 + 3000.0]


def _nonlinear2d(y):
    y1, y2 = y
    return [-1002.0 * y1 + 1000.0 * y2**2, y1 - y2 - y2**2]


def _nonlinear3d(y):
    y1, y2, y3 = y
    return [-1003.0 * y1 + 1000.0 * y2 * y3, -y2 - y2**2 + y3, y1 - 2.0 * y3 - y2 * y3]


def _hires(y):
    y1, y2, y3, y4, y5, y6, y7, y8 = y
    return [
        -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
        1.71 * y1 - 8.75 * y2,
        -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
        8.32 * y2 + 1.71 * y3 - 1.12 * y4,
        -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
        -280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
        280.0 * y6 * y8 - 1.81 * y7,
        -280.0 * y6 * y8 + 1.81 * y7,
    ]


def _vanderpol(y):
    y1, y2 = y
    mu = 1000.0
    return [y2, mu * y2 - mu * y1**2 * y2 - y1]


class Example(eqx.Module):
    """One of the reproduction studies: a stiff system, its data and a model for it.

    The system is $y' = p(y) + k(t, y)$ with a polynomial $p$ that is to be learned by
    a [`diffrax_implicit_node.PiNet`][] and a known part $k$ (only in `linear`). The
    studies are in [`diffrax_implicit_node.EXAMPLES`][], by name; they follow Fronk &
    Petzold's, but `linear`, `nonlinear2d` and `nonlinear3d` are our own systems (the
    paper's could not be recovered), while `hires` (with the paper's 20 initial
    conditions) and `vanderpol` are the standard test problems.

    **Attributes:**

    - `name`: The name, as on the command line.
    - `description`: A one-line description.
    - `polynomial`: The true $p$, a function from the list of state components to the
        list of right-hand sides, for arrays and SymPy symbols alike.
    - `known`: The known part `k(t, y, args)`, or `None`.
    - `initial_conditions`: One initial condition per trajectory, shape `(B, n)`.
    - `t1`: The observations lie in $[0, t_1]$.
    - `degree`, `width`: Of the PiNet.
    - `epochs`: The default number of epochs (optimiser steps).
    - `optimiser`: The default optimiser's name, for
        [`diffrax_implicit_node.optimiser_from_name`][].
    - `steps_per_interval`: The default number of solver steps between consecutive
        observations, or `"auto"` to let [`diffrax_implicit_node.fit`][] choose them
        gap by gap: more than one where a fast transient falls inside a gap, which
        one step cannot resolve (and then biases the learned stiff coefficients).
    - `model_type`: The default model, one of `MODEL_NAMES`: `"pinet"` for a
        [`diffrax_implicit_node.PiNet`][] of `degree` and `width`, `"polynomial"` for
        a [`diffrax_implicit_node.PolynomialLibrary`][] of `degree`.
    - `points`: The default number of equally spaced observations per trajectory.

    ??? cite "References"

        ```bibtex
        @article{fronk2024neural,
            title={Neural ODEs for Stiff Systems: Implicit Single-Step Methods},
            author={Fronk, Colby and Petzold, Linda},
            journal={arXiv:2410.05592},
            year={2024}
        }

        @book{hairer1996solving,
            title={Solving Ordinary Differential Equations II: Stiff and
                   Differential-Algebraic Problems},
            author={Hairer, Ernst and Wanner, Gerhard},
            edition={2},
            year={1996},
            publisher={Springer}
        }
        ```
    """

    name: str
    description: str
    polynomial: Callable[[list], list]
    known: Callable[[Scalar, Array, PyTree], Array] | None
    initial_conditions: np.ndarray
    t1: float
    degree: int
    width: int
    epochs: int
    optimiser: str = "lbfgs"
    steps_per_interval: int | Literal["auto"] = 1
    model_type: str = "pinet"
    points: int = 369

    def __check_init__(self):
        if self.model_type not in MODEL_NAMES:
            raise ValueError(
                f"Example {self.name!r}: unknown model type {self.model_type!r}; "
                f"choose one of {', '.join(MODEL_NAMES)}."
            )
        if self.optimiser not in OPTIMISER_NAMES:
            raise ValueError(
                f"Example {self.name!r}: unknown optimiser {self.optimiser!r}; choose "
                f"one of {', '.join(OPTIMISER_NAMES)}."
            )
        if self.steps_per_interval != "auto" and self.steps_per_interval < 1:
            raise ValueError(
                f"Example {self.name!r}: `steps_per_interval` must be at least 1, "
                f"got {self.steps_per_interval}."
            )

    @property
    def size(self) -> int:
        """The dimension of the state."""
        return self.initial_conditions.shape[1]

    def vector_field(self, t: Scalar, y: Array, args: PyTree) -> Array:
        """The true vector field $p(y) + k(t, y)$, for `diffrax.ODETerm`.

        **Arguments:**

        - `t`: The time.
        - `y`: The state, an array of shape `(n,)`.
        - `args`: Passed on to the known part.

        **Returns:**

        The derivative, an array of shape `(n,)`.
        """
        out = jnp.stack(self.polynomial(list(y)))
        if self.known is not None:
            out = out + self.known(t, y, args)
        return out

    def true_equations(self) -> list[sympy.Expr]:
        """The true polynomial part $p$, as SymPy expressions.

        **Returns:**

        One expanded expression per state component, in the variables `x0, x1, ...`
        (as [`diffrax_implicit_node.to_sympy`][] names them by default).
        """
        variables = sympy.symbols(f"x0:{self.size}")
        return [sympy.expand(e) for e in self.polynomial(list(variables))]

    def data(
        self, points: int | Float[ArrayLike, " T"]
    ) -> tuple[Float[np.ndarray, " T"], Float[np.ndarray, "B T n"]]:
        """Observations of every trajectory, by default at equally spaced times in
        $[0, t_1]$.

        They come from a tight-tolerance reference solve (adaptive `RadauIIA5`,
        `rtol = atol = 1e-12`), in float64 when `jax_enable_x64` is set.

        **Arguments:**

        - `points`: The number of equally spaced observations per trajectory, $T$; or
            the observation times themselves, increasing from 0 (for instance
            several inside a fast transient).

        **Returns:**

        `(ts, ys)`, NumPy arrays of shapes `(T,)` and `(B, T, n)`, ready for
        [`diffrax_implicit_node.fit`][].
        """
        if isinstance(points, (int, np.integer)):
            ts = np.linspace(0.0, self.t1, points)
        else:
            ts = np.asarray(points, dtype=float)
            if ts.ndim != 1 or ts[0] != 0 or np.any(np.diff(ts) <= 0):
                raise ValueError(
                    "The observation times must be a 1-D array that increases "
                    "strictly from 0."
                )
        y0s = jnp.asarray(self.initial_conditions)
        ys, succeeded = reference_solve(
            self.vector_field,
            jnp.broadcast_to(jnp.asarray(ts), (len(y0s), len(ts))),
            y0s,
        )
        if not bool(jnp.all(succeeded)):
            raise RuntimeError(f"Example {self.name!r}: the reference solve failed.")
        return ts, np.asarray(ys)

    def model(
        self, key: PRNGKeyArray, model_type: str | None = None
    ) -> NeuralVectorField:
        """A fresh, untrained model for the example.

        **Arguments:**

        - `key`: A `jax.random.PRNGKey` for the initialisation of the PiNet.
        - `model_type`: `"pinet"` or `"polynomial"`; defaults to the example's.

        **Returns:**

        A [`diffrax_implicit_node.NeuralVectorField`][] whose learned part is a
        [`diffrax_implicit_node.PiNet`][] of the example's `degree` and `width` (or a
        [`diffrax_implicit_node.PolynomialLibrary`][] of its `degree`), and whose
        known part is the example's `known`.
        """
        learned = learned_from_name(
            model_type or self.model_type, self.size, self.degree, self.width, key=key
        )
        return NeuralVectorField(learned, self.known)

    def compare(self, learned: list[sympy.Expr]) -> list["CoefficientComparison"]:
        """Compares learned equations with the true ones, coefficient by coefficient.

        **Arguments:**

        - `learned`: One polynomial per state component, in `x0, x1, ...`.

        **Returns:**

        One [`diffrax_implicit_node.CoefficientComparison`][] for every monomial of
        the true or the learned polynomial of each state component; a missing
        monomial has coefficient 0.
        """
        variables = sympy.symbols(f"x0:{self.size}")
        comparison = []
        for variable, true, guess in zip(
            variables, self.true_equations(), learned, strict=True
        ):
            true_coefficients = coefficients(true, variables)
            learned_coefficients = coefficients(guess, variables)
            for monomial in {**true_coefficients, **learned_coefficients}:
                a = true_coefficients.get(monomial, 0.0)
                a_hat = learned_coefficients.get(monomial, 0.0)
                comparison.append(
                    CoefficientComparison(
                        equation=str(variable),
                        monomial=monomial,
                        true=a,
                        learned=a_hat,
                        relative_error=abs(a_hat - a) / abs(a) if a else None,
                    )
                )
        return comparison


class CoefficientComparison(NamedTuple):
    r"""One coefficient of learned equations against the truth, from
    [`diffrax_implicit_node.Example.compare`][].

    **Attributes:**

    - `equation`: The state component whose equation it is in, `"x0"`, `"x1"`, ...
    - `monomial`: The monomial, as SymPy prints it (`"x0*x1"`, `"1"`).
    - `true`, `learned`: The true and the learned coefficient (0 where absent).
    - `relative_error`: $|\hat a - a| / |a|$; `None` for a monomial absent from the
        truth (then `learned` itself is the error).
    """

    equation: str
    monomial: str
    true: float
    learned: float
    relative_error: float | None


EXAMPLES: dict[str, Example] = {
    example.name: example
    for example in (
        Example(
            name="linear",
            description="y' = -1000 y + 3000 - 2000 exp(-t), the forcing known",
            polynomial=_linear,
            known=_exponential_forcing,
            initial_conditions=np.array([[0.0]]),
            t1=4.0,
            degree=1,
            width=4,
            epochs=300,
            # The transient (rate 1000) lies inside the first gap: one step per gap
            # leaves it under-damped and biases both coefficients by about 1e-3.
            steps_per_interval="auto",
        ),
        Example(
            name="nonlinear2d",
            description="Kaps' problem, from (1, 1) and three starts off the manifold",
            polynomial=_nonlinear2d,
            known=None,
            initial_conditions=np.array(
                [[1.0, 1.0], [0.0, 1.0], [2.0, 0.5], [0.5, 1.5]]
            ),
            t1=4.0,
            degree=2,
            width=8,
            epochs=300,
            # The transients of the three starts off the manifold (rate 1000) fall
            # inside the first gap: resolve them, and follow the ill-conditioned
            # valley of the loss that they leave.
            optimiser="levenberg-marquardt",
            steps_per_interval=16,
        ),
        Example(
            name="nonlinear3d",
            description="fast transients onto the manifold y1 = y2 y3, four starts",
            polynomial=_nonlinear3d,
            known=None,
            initial_conditions=np.array(
                [[0.0, 1.0, 1.0], [1.0, 0.5, 1.5], [2.0, 1.5, 0.5], [0.5, 0.2, 2.0]]
            ),
            t1=4.0,
            degree=2,
            width=12,
            epochs=300,
            optimiser="levenberg-marquardt",
            steps_per_interval=8,
        ),
        Example(
            name="hires",
            description="HIRES from the 20 initial conditions of Table 7",
            polynomial=_hires,
            known=None,
            initial_conditions=HIRES_INITIAL_CONDITIONS,
            # On the paper's [0, 321.8] most observations sit at steady state, and
            # the residuals leave about 40 combinations of coefficients undetermined
            # (benchmarks/hires_identifiability.py); on [0, 20] they determine all.
            t1=20.0,
            degree=2,
            width=48,
            # Levenberg-Marquardt converges in about 190 steps; with 4 steps per gap
            # the bias of the fast reaction's equations is 30x larger.
            epochs=300,
            optimiser="levenberg-marquardt",
            steps_per_interval=8,
            model_type="polynomial",
            points=100,
        ),
        Example(
            name="vanderpol",
            description="van der Pol with mu = 1000",
            polynomial=_vanderpol,
            known=None,
            initial_conditions=np.array([[2.0, 0.0]]),
            t1=3000.0,
            degree=3,
            width=12,
            epochs=300,
        ),
    )
}
