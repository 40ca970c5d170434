from collections.abc import Callable, Mapping, Sequence
from typing import cast, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import sympy
from jaxtyping import Array, ArrayLike

from ._pinet import PiNet
from ._polynomial import PolynomialLibrary


def _default_variables(size: int) -> tuple[sympy.Symbol, ...]:
    return tuple(sympy.symbols(f"x0:{size}"))


def _linear_polynomials(
    weight: ArrayLike, bias: ArrayLike, variables: tuple[sympy.Symbol, ...]
) -> list[sympy.Poly]:
    """The outputs of an affine layer, as polynomials with 53-bit float coefficients."""
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    size = len(variables)
    unit_exponents = [tuple(int(i == j) for i in range(size)) for j in range(size)]
    return [
        sympy.Poly.from_dict(
            {(0,) * size: float(b), **dict(zip(unit_exponents, map(float, row)))},
            *variables,
            domain=sympy.RR,
        )
        for row, b in zip(weight, bias)
    ]


def _library_polynomials(
    model: PolynomialLibrary, variables: tuple[sympy.Symbol, ...]
) -> list[sympy.Expr]:
    exponents = [tuple(map(int, row)) for row in model.exponents]
    return [
        sympy.Poly.from_dict(
            dict(zip(exponents, map(float, row))), *variables, domain=sympy.RR
        ).as_expr()
        for row in np.where(
            np.asarray(model.support), np.asarray(model.coefficients, np.float64), 0.0
        )
    ]


def to_sympy(
    model: PiNet | PolynomialLibrary, variables: Sequence[sympy.Symbol] | None = None
) -> list[sympy.Expr]:
    """Writes out a [`diffrax_implicit_node.PiNet`][] or a
    [`diffrax_implicit_node.PolynomialLibrary`][] as polynomials.

    A PiNet is expanded layer by layer in polynomial arithmetic on its parameters
    (converted exactly to 53-bit floats), so evaluating the expressions gives the
    output of the network up to floating-point round-off; a library's coefficients
    are its polynomials' coefficients. Monomials whose coefficient is exactly zero do
    not appear; use [`diffrax_implicit_node.prune`][] to drop negligible ones.

    **Arguments:**

    - `model`: The PiNet or library. For a
        [`diffrax_implicit_node.NeuralVectorField`][], pass its learned part,
        `field.learned`.
    - `variables`: One SymPy symbol per input. Defaults to `x0, x1, ...`.

    **Returns:**

    A list of expanded SymPy expressions, one per output.
    """
    if not isinstance(model, (PiNet, PolynomialLibrary)):
        raise TypeError(
            f"`to_sympy` expects a PiNet or a PolynomialLibrary, got "
            f"{type(model).__name__}; for a `NeuralVectorField`, pass its `.learned` "
            "part."
        )
    in_size = model.size if isinstance(model, PolynomialLibrary) else model.in_size
    variables = _default_variables(in_size) if variables is None else tuple(variables)
    if len(variables) != in_size:
        raise ValueError(
            f"The {type(model).__name__} has {in_size} inputs, but {len(variables)} "
            "variables were given."
        )
    if isinstance(model, PolynomialLibrary):
        return _library_polynomials(model, variables)
    first, *rest = [
        _linear_polynomials(layer.weight, cast(Array, layer.bias), variables)
        for layer in model.layers
    ]
    hidden = first
    for layer in rest:
        # h_k = L_k(x) ⊙ h_{k-1} + h_{k-1} = (L_k(x) + 1) ⊙ h_{k-1}.
        hidden = [(lk + 1) * h for lk, h in zip(layer, hidden)]
    assert model.output.bias is not None
    output_weight = np.asarray(model.output.weight, dtype=np.float64)
    output_bias = np.asarray(model.output.bias, dtype=np.float64)
    zero = sympy.Poly(0, *variables, domain=sympy.RR)
    outputs = []
    for row, beta in zip(output_weight, output_bias):
        polynomial = sum((float(c) * h for c, h in zip(row, hidden)), zero)
        outputs.append((polynomial + float(beta)).as_expr())
    return outputs


def coefficients(
    expression: sympy.Expr, variables: Sequence[sympy.Symbol]
) -> dict[str, float]:
    """The coefficients of a polynomial, by monomial.

    **Arguments:**

    - `expression`: A polynomial in `variables` (other symbols are not allowed).
    - `variables`: The variables.

    **Returns:**

    A dictionary from each monomial with a nonzero coefficient, as SymPy prints it
    (`"x0*x1"`, `"x0**2"`, and `"1"` for the constant term), to its coefficient.
    """
    # A rounded coefficient (see `round_coefficients`) stands for the decimal number it
    # prints as, not for its few-bit binary value.
    expression = cast(
        sympy.Expr,
        expression.xreplace(
            {
                f: sympy.Float(str(f), 15)
                for f in expression.atoms(sympy.Float)
                if f._prec < 53
            }
        ),
    )
    try:
        polynomial = sympy.Poly(expression, *variables)
    except sympy.PolynomialError as e:
        raise ValueError(
            f"{expression} is not a polynomial in {', '.join(map(str, variables))}."
        ) from e
    if not polynomial.domain.is_Numerical:
        raise ValueError(
            f"{expression} has symbols other than {', '.join(map(str, variables))}."
        )
    return {
        str(sympy.Mul(*(v**e for v, e in zip(variables, exponents)))): float(c)
        for exponents, c in polynomial.terms()
    }


def prune(expressions: Sequence[sympy.Expr], threshold: float) -> list[sympy.Expr]:
    """Drops the terms whose coefficient is smaller than `threshold` in magnitude.

    A trained network of degree $d$ has a coefficient for every monomial of degree up
    to $d$; those that the data do not need come out small but not zero. The threshold
    is absolute, so choose it relative to the size of the coefficients you expect.

    **Arguments:**

    - `expressions`: Polynomials, such as the output of
        [`diffrax_implicit_node.to_sympy`][].
    - `threshold`: Terms with `|coefficient| < threshold` are dropped.

    **Returns:**

    The pruned expressions, as a list.
    """
    pruned = []
    for expression in expressions:
        terms = sympy.expand(expression).as_coefficients_dict()
        pruned.append(
            sympy.Add(*(c * m for m, c in terms.items() if abs(c) >= threshold))
        )
    return pruned


def round_coefficients(
    expressions: Sequence[sympy.Expr], digits: int
) -> list[sympy.Expr]:
    """Rounds the coefficients of expressions to a number of significant digits.

    Every floating-point number in the expressions is rounded to `digits` significant
    digits, which is also how many digits it then prints with. Integers and symbols
    are left as they are.

    A rounded number is a SymPy `Float` of `digits` digits of precision, and stands for
    the decimal number it prints as: [`diffrax_implicit_node.coefficients`][] and
    [`diffrax_implicit_node.to_jax`][] read `-1001.9731` rounded to 4 digits as
    `-1002.0`.

    **Arguments:**

    - `expressions`: SymPy expressions.
    - `digits`: The number of significant digits, at least 1.

    **Returns:**

    The rounded expressions, as a list.
    """
    if digits < 1:
        raise ValueError(f"`digits` must be at least 1, got {digits}.")
    return [
        cast(
            sympy.Expr,
            expression.xreplace(
                {
                    # Round in decimal, which is what is printed.
                    f: sympy.Float(f"{float(f):.{digits}g}", digits)
                    for f in expression.atoms(sympy.Float)
                }
            ),
        )
        for expression in expressions
    ]


def _derivative_label(
    variable: sympy.Symbol, format: Literal["text", "markdown", "latex"]
) -> str:
    if format == "text":
        return f"{variable}'"
    return rf"\dot{{{sympy.latex(variable)}}}"


def equations_table(
    equations: Mapping[str, Sequence[sympy.Expr]],
    variables: Sequence[sympy.Symbol] | None = None,
    *,
    digits: int = 6,
    format: Literal["text", "markdown", "latex"] = "text",
) -> str:
    r"""Renders systems of ODEs side by side, one row per state variable.

    Use it to put learned equations next to the true ones, or the equations learned
    with different solvers or amounts of data next to each other. Each column is
    rounded with [`diffrax_implicit_node.round_coefficients`][] first.

    **Arguments:**

    - `equations`: Maps the title of each column (e.g. `"true"`, `"learned"`) to the
        right-hand sides of the system, one expression per state variable.
    - `variables`: The state variables, which label the rows. Defaults to
        `x0, x1, ...`.
    - `digits`: The significant digits of the coefficients.
    - `format`: `"text"` for plain text with aligned columns, `"markdown"` for a
        Markdown table with the equations in `$...$` math, or `"latex"` for a LaTeX
        `array`.

    **Returns:**

    The table, as a string.
    """
    columns = {
        title: round_coefficients(expressions, digits)
        for title, expressions in equations.items()
    }
    sizes = {len(expressions) for expressions in columns.values()}
    if len(sizes) != 1:
        raise ValueError("Every column needs one expression per state variable.")
    (size,) = sizes
    variables = _default_variables(size) if variables is None else tuple(variables)
    if len(variables) != size:
        raise ValueError(f"Expected {size} variables, got {len(variables)}.")
    titles = list(columns)
    if format == "text":
        rows = [[""] + titles] + [
            [_derivative_label(v, format)] + [str(columns[t][i]) for t in titles]
            for i, v in enumerate(variables)
        ]
        widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
        return "\n".join(
            " | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in rows
        )
    if format == "markdown":
        lines = [
            "| | " + " | ".join(titles) + " |",
            "|---" * (len(titles) + 1) + "|",
        ]
        for i, v in enumerate(variables):
            cells = [f"${_derivative_label(v, format)}$"] + [
                f"${sympy.latex(columns[t][i])}$" for t in titles
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    if format == "latex":
        header = " & ".join([""] + [rf"\text{{{t}}}" for t in titles])
        body = [
            " & ".join(
                [_derivative_label(v, format)]
                + [sympy.latex(columns[t][i]) for t in titles]
            )
            for i, v in enumerate(variables)
        ]
        lines = [rf"\begin{{array}}{{l{'l' * len(titles)}}}", header + r" \\"]
        lines += [row + r" \\" for row in body]
        return "\n".join(lines + [r"\end{array}"])
    raise ValueError(f"`format` must be 'text', 'markdown' or 'latex', got {format!r}.")


def to_jax(
    expressions: Sequence[sympy.Expr], variables: Sequence[sympy.Symbol]
) -> Callable[[ArrayLike], Array]:
    """Turns expressions back into a JAX function.

    Use it to simulate learned (and pruned, rounded) equations with Diffrax, e.g. to
    check them against the data: the function of a state `y` is wrapped into a vector
    field as `lambda t, y, args: function(y)`.

    **Arguments:**

    - `expressions`: SymPy expressions in `variables`.
    - `variables`: The inputs, in order.

    **Returns:**

    A function from an array `x` of shape `(len(variables),)` to the values of the
    expressions at `x`, an array of shape `(len(expressions),)`. It works under
    `jax.jit`, `jax.vmap` and `jax.grad`.
    """
    variables = tuple(variables)
    function = sympy.lambdify(variables, list(expressions), modules="jax")

    def evaluate(x: ArrayLike) -> Array:
        x = jnp.asarray(x)
        if x.shape != (len(variables),):
            raise ValueError(
                f"Expected an input of shape ({len(variables)},), got {x.shape}."
            )
        values = function(*x)
        # Constant expressions come back as Python numbers.
        return jnp.stack(jnp.broadcast_arrays(*(jnp.asarray(v) for v in values)))

    return evaluate


def _monomial_names(library: PolynomialLibrary) -> list[str]:
    """Each monomial of `library`, as SymPy prints it, in the order of its columns."""
    variables = _default_variables(library.size)
    return [
        str(sympy.Mul(*(v ** int(k) for v, k in zip(variables, row))))
        for row in library.exponents
    ]


def coefficient_names(library: PolynomialLibrary) -> list[str]:
    """The name of every coefficient of `library`, row by row: `"x0': x1**2"` is the
    coefficient of `x1**2` in the equation of `x0`."""
    monomials = _monomial_names(library)
    return [f"x{i}': {m}" for i in range(library.size) for m in monomials]


def as_polynomial_library(learned: PiNet | PolynomialLibrary) -> PolynomialLibrary:
    """A PiNet as the polynomial library it equals (a library as it is)."""
    if isinstance(learned, PolynomialLibrary):
        return learned
    library = PolynomialLibrary(learned.in_size, learned.degree)
    variables = _default_variables(learned.in_size)
    monomials = _monomial_names(library)
    by_equation = [coefficients(e, variables) for e in to_sympy(learned, variables)]
    matrix = [[row.get(m, 0.0) for m in monomials] for row in by_equation]
    return eqx.tree_at(lambda m: m.coefficients, library, jnp.asarray(matrix))
