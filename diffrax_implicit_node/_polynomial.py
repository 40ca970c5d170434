import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float


def monomial_exponents(size: int, degree: int) -> np.ndarray:
    """The exponents of every monomial of total degree at most `degree` in `size`
    variables, one row per monomial: by degree, and lexicographically within a degree
    (`1, x0, x1, x0², x0 x1, x1², ...`)."""
    rows = []
    for total in range(degree + 1):
        for factors in itertools.combinations_with_replacement(range(size), total):
            rows.append(np.bincount(np.array(factors, dtype=int), minlength=size))
    return np.array(rows, dtype=int).reshape(-1, size)


class PolynomialLibrary(eqx.Module):
    r"""A polynomial vector field that is linear in its coefficients: every monomial
    of total degree at most `degree` in the state, with one coefficient per equation
    and monomial,

    $$g_i(y) = \sum_k C_{ik}\, \phi_k(y), \qquad
    \phi = (1, y_1, \dots, y_n, y_1^2, y_1 y_2, \dots, y_n^d).$$

    The coefficient matrix $C$ (equations by monomials, see `exponents`) *is* the
    learned equation, and starts at zero. Compared with a
    [`diffrax_implicit_node.PiNet`][], which spans the same polynomials through a
    product of layers, the residuals of
    [`diffrax_implicit_node.fit`][] are far better conditioned in $C$, a least-squares
    fit has no redundant parameters, and the derivative of $g$ with respect to $C$ is
    the monomials themselves (which `fit`'s fast Jacobian exploits). It has
    $n \binom{n + d}{d}$ parameters: 360 for 8 states and degree 2.

    [`diffrax_implicit_node.to_sympy`][] writes it out as polynomials. Terms can be
    removed (`without_terms`): their coefficients are then zero and stay zero in
    training, as [`diffrax_implicit_node.sparsify`][] uses.
    """

    coefficients: Float[Array, "size monomials"]
    # Which terms the equations have; a removed term's coefficient is held at zero.
    # (Boolean: not trained by `fit`'s default filter.)
    support: Bool[Array, "size monomials"]
    size: int = eqx.field(static=True)
    degree: int = eqx.field(static=True)
    # factors[k] lists the variables whose product is monomial k, padded with `size`,
    # the index of a constant 1.
    factors: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    def __init__(self, size: int, degree: int, *, dtype=None):
        r"""**Arguments:**

        - `size`: The number of states (inputs and outputs).
        - `degree`: The largest total degree of the monomials, at least 1.
        - `dtype`: The dtype of the coefficients. Defaults to JAX's default floating
            dtype (`float32`, or `float64` when `jax_enable_x64` is set).
        """
        for name, value in (("size", size), ("degree", degree)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{name}` must be an integer, got {value!r}.")
            if value < 1:
                raise ValueError(f"`{name}` must be at least 1, got {value}.")
        exponents = monomial_exponents(size, degree)
        self.factors = tuple(
            tuple(np.repeat(np.arange(size), row).tolist())
            + (size,) * (degree - int(row.sum()))
            for row in exponents
        )
        self.coefficients = jnp.zeros((size, len(exponents)), dtype=dtype)
        self.support = jnp.ones((size, len(exponents)), dtype=bool)
        self.size = size
        self.degree = degree

    @property
    def exponents(self) -> np.ndarray:
        """The exponents of the monomials, shape `(monomials, size)`: column `k` of
        `coefficients` multiplies $\\prod_j y_j^{e_{kj}}$."""
        return monomial_exponents(self.size, self.degree)

    def without_terms(
        self, terms: Bool[ArrayLike, "size monomials"]
    ) -> "PolynomialLibrary":
        """The library with the terms marked in `terms` (shaped like `coefficients`)
        removed: their coefficients set to zero, where training keeps them."""
        terms = np.asarray(terms)
        if terms.shape != self.coefficients.shape or terms.dtype != bool:
            raise ValueError(
                f"`terms` must be a boolean mask of shape {self.coefficients.shape}, "
                f"got {terms.dtype} of shape {terms.shape}."
            )
        support = self.support & jnp.asarray(~terms)
        return eqx.tree_at(
            lambda library: (library.coefficients, library.support),
            self,
            (jnp.where(support, self.coefficients, 0), support),
        )

    def features(self, y: Float[ArrayLike, " size"]) -> Float[Array, " monomials"]:
        """The monomials $\\phi(y)$, in the order of `coefficients`' columns."""
        y = jnp.asarray(y)
        if y.shape != (self.size,):
            raise ValueError(
                f"PolynomialLibrary expects an input of shape ({self.size},), got "
                f"shape {y.shape}; use `jax.vmap` for a batch of inputs."
            )
        padded = jnp.concatenate([y, jnp.ones((1,), dtype=y.dtype)])
        return jnp.prod(padded[jnp.array(self.factors)], axis=1)

    def __call__(self, y: Float[ArrayLike, " size"]) -> Float[Array, " size"]:
        """**Arguments:**

        - `y`: The state, an array of shape `(size,)`.

        **Returns:**

        $C\\,\\phi(y)$, an array of shape `(size,)`.
        """
        features = self.features(y)
        coefficients = jnp.where(self.support, self.coefficients, 0)
        # Inputs of another floating dtype promote with the coefficients, as in PiNet.
        with jax.numpy_dtype_promotion("standard"):
            return coefficients @ features
