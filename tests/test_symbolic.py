import diffrax_implicit_node as din
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import sympy
from helpers import without_runtime_type_checks
from test_pinet import random_pinet


X0, X1, X2 = sympy.symbols("x0:3")


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_to_sympy_is_exact(degree):
    model = random_pinet(3, 2, degree, 7, seed=degree)
    expressions = din.to_sympy(model)
    assert all(sympy.Poly(e, X0, X1, X2).total_degree() == degree for e in expressions)
    for x in np.asarray(jr.normal(jr.key(4), (10, 3))):
        expected = np.asarray(model(jnp.asarray(x)))
        values = [float(e.subs(dict(zip((X0, X1, X2), x)))) for e in expressions]
        np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-12)


def test_to_sympy_variables_and_errors():
    model = random_pinet(2, 1, 2, 3)
    a, b = sympy.symbols("a b")
    (expression,) = din.to_sympy(model, [a, b])
    assert expression.free_symbols == {a, b}
    with pytest.raises(ValueError, match="2 inputs"):
        din.to_sympy(model, [a])
    with pytest.raises(TypeError, match="learned"):
        din.to_sympy(din.NeuralVectorField(model))  # pyright: ignore[reportArgumentType]


def test_round_trip_to_jax():
    model = random_pinet(3, 3, 2, 6)
    function = din.to_jax(din.to_sympy(model), (X0, X1, X2))
    xs = jr.normal(jr.key(5), (20, 3))
    np.testing.assert_allclose(
        jax.jit(jax.vmap(function))(xs), jax.vmap(model)(xs), rtol=1e-12, atol=1e-12
    )
    grad = jax.grad(lambda x: function(x)[0])(xs[0])
    np.testing.assert_allclose(grad, jax.grad(lambda x: model(x)[0])(xs[0]), rtol=1e-10)
    constant = din.to_jax([X0 + 1, sympy.Float(2.0)], (X0,))
    np.testing.assert_array_equal(constant(jnp.array([3.0])), [4.0, 2.0])


def test_coefficients_prune_round():
    expression = -1000.0 * X0 * X1 + 2.5 * X0**2 + 3.0 + 1e-9 * X1
    assert din.coefficients(expression, (X0, X1)) == {
        "x0*x1": -1000.0,
        "x0**2": 2.5,
        "1": 3.0,
        "x1": 1e-9,
    }
    (pruned,) = din.prune([expression], 1e-6)
    assert din.coefficients(pruned, (X0, X1)) == {
        "x0*x1": -1000.0,
        "x0**2": 2.5,
        "1": 3.0,
    }
    (rounded,) = din.round_coefficients([1002.123456 * X0 - 0.0012345 * X1], 3)
    assert str(rounded) == "1.0e+3*x0 - 0.00123*x1"
    # A rounded coefficient is the decimal number it prints as, everywhere.
    (rounded,) = din.round_coefficients([-1001.9731 * X0 + 0.123456], 4)
    assert str(rounded) == "0.1235 - 1002.0*x0"
    assert din.coefficients(rounded, (X0,)) == {"x0": -1002.0, "1": 0.1235}
    np.testing.assert_array_equal(
        din.to_jax([rounded], (X0,))(jnp.array([1.0])), [0.1235 - 1002.0]
    )
    with pytest.raises(ValueError, match="not a polynomial"):
        din.coefficients(sympy.exp(X0), (X0,))
    with pytest.raises(ValueError, match="other than"):
        din.coefficients(X0 * X2, (X0,))


def test_equations_table():
    true = [-1002.0 * X0 + 1000.0 * X1**2, X0 - X1 - X1**2]
    learned = [-1001.98765 * X0 + 999.9 * X1**2, 1.0001 * X0 - X1 - X1**2]
    text = din.equations_table({"true": true, "learned": learned}, digits=5)
    # Each column rounded to 5 significant digits (-1001.98765 to -1002.0).
    cells = [[cell.strip() for cell in line.split("|")] for line in text.splitlines()]
    assert cells == [
        ["", "true", "learned"],
        ["x0'", "-1002.0*x0 + 1000.0*x1**2", "-1002.0*x0 + 999.9*x1**2"],
        ["x1'", "x0 - x1**2 - x1", "1.0001*x0 - x1**2 - x1"],
    ]
    markdown = din.equations_table({"true": true}, format="markdown")
    assert markdown.splitlines()[2].startswith(r"| $\dot{x_{0}}$ | $")
    latex = din.equations_table({"true": true}, format="latex")
    assert latex.startswith(r"\begin{array}{ll}") and latex.endswith(r"\end{array}")
    with pytest.raises(ValueError, match="one expression per state"):
        din.equations_table({"a": true, "b": true[:1]})
    with without_runtime_type_checks(), pytest.raises(ValueError, match="format"):
        din.equations_table({"a": true}, format="html")  # pyright: ignore[reportArgumentType]
