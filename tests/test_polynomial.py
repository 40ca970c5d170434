import dataclasses
import math

import diffrax_implicit_node as din
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import sympy
from helpers import without_runtime_type_checks
from test_pinet import random_pinet


def random_library(size, degree, seed=0):
    library = din.PolynomialLibrary(size, degree)
    shape = library.coefficients.shape
    return eqx.tree_at(
        lambda m: m.coefficients, library, jr.normal(jr.key(seed), shape)
    )


@pytest.mark.parametrize("size, degree", [(1, 1), (2, 3), (3, 2), (8, 2)])
def test_monomials(size, degree):
    library = din.PolynomialLibrary(size, degree)
    exponents = library.exponents
    assert exponents.shape == (math.comb(size + degree, degree), size)
    assert len({tuple(row) for row in exponents}) == len(exponents)
    assert exponents.min() >= 0 and exponents.sum(axis=1).max() == degree
    # Graded: the total degree never decreases.
    assert np.all(np.diff(exponents.sum(axis=1)) >= 0)
    assert library.coefficients.shape == (size, len(exponents))
    assert not np.any(library.coefficients)


def test_evaluation_is_the_naive_sum():
    library = random_library(3, 3, seed=1)
    coefficients = np.asarray(library.coefficients)
    xs = np.asarray(jr.normal(jr.key(2), (10, 3)))
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        values = jax.jit(jax.vmap(library))(jnp.asarray(xs))
    for x, value in zip(xs, values):
        monomials = np.prod(x[None, :] ** library.exponents, axis=1)
        np.testing.assert_allclose(value, coefficients @ monomials, rtol=1e-12)
    # Linear in the coefficients: the derivative is the monomials.
    derivative = jax.jacfwd(
        lambda c: eqx.tree_at(lambda m: m.coefficients, library, c)(xs[0])
    )(library.coefficients)
    monomials = np.prod(xs[0][None, :] ** library.exponents, axis=1)
    np.testing.assert_allclose(
        derivative, np.einsum("il,k->ilk", np.eye(3), monomials), rtol=1e-14
    )


def test_represents_an_expanded_pinet():
    pinet = random_pinet(3, 3, 2, 6, seed=3)
    variables = sympy.symbols("x0:3")
    library = din.PolynomialLibrary(3, 2)
    names = [
        str(sympy.Mul(*(v**e for v, e in zip(variables, row))))
        for row in library.exponents
    ]
    table = [din.coefficients(e, variables) for e in din.to_sympy(pinet)]
    coefficients = jnp.array([[row.get(name, 0.0) for name in names] for row in table])
    library = eqx.tree_at(lambda m: m.coefficients, library, coefficients)
    xs = jr.normal(jr.key(4), (20, 3))
    np.testing.assert_allclose(
        jax.vmap(library)(xs), jax.vmap(pinet)(xs), rtol=1e-11, atol=1e-12
    )


def test_to_sympy_round_trip():
    library = random_library(3, 2, seed=5)
    variables = sympy.symbols("a b c")
    expressions = din.to_sympy(library, variables)
    for expression, row in zip(expressions, np.asarray(library.coefficients)):
        found = din.coefficients(expression, variables)
        for exponents, value in zip(library.exponents, row):
            name = str(sympy.Mul(*(v**e for v, e in zip(variables, exponents))))
            assert found[name] == value
    function = din.to_jax(expressions, variables)
    xs = jr.normal(jr.key(6), (10, 3))
    np.testing.assert_allclose(
        jax.vmap(function)(xs), jax.vmap(library)(xs), rtol=1e-12, atol=1e-12
    )
    pruned = din.prune(expressions, 0.5)
    assert all(
        abs(c) >= 0.5 for e in pruned for c in din.coefficients(e, variables).values()
    )


def test_errors():
    with pytest.raises(ValueError, match="at least 1"):
        din.PolynomialLibrary(2, 0)
    with without_runtime_type_checks(), pytest.raises(TypeError, match="integer"):
        din.PolynomialLibrary(2.0, 2)  # pyright: ignore[reportArgumentType]
    library = din.PolynomialLibrary(2, 2)
    with pytest.raises(ValueError, match="shape"):
        library(jnp.zeros(3))
    with pytest.raises(ValueError, match="2 inputs"):
        din.to_sympy(library, [sympy.Symbol("a")])


def test_example_model_types():
    example = din.EXAMPLES["nonlinear2d"]
    assert isinstance(example.model(jr.key(0)).learned, din.PiNet)
    library = example.model(jr.key(0), "polynomial").learned
    assert isinstance(library, din.PolynomialLibrary)
    assert library.size == 2 and library.degree == example.degree
    assert isinstance(din.EXAMPLES["hires"].model(jr.key(0)).learned, type(library))
    with pytest.raises(ValueError, match="unknown model type 'mlp'"):
        dataclasses.replace(example, model_type="mlp")
    with pytest.raises(ValueError, match="Unknown model 'mlp'"):
        example.model(jr.key(0), "mlp")
