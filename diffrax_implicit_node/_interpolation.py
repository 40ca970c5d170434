import diffrax
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from diffrax._misc import linear_rescale
from jaxtyping import Array, PyTree, Shaped

from ._custom_types import RealScalarLike, Y


class LocalPolynomialInterpolation(diffrax.AbstractLocalInterpolation):
    """Dense output over one step as a polynomial in the normalised time
    `θ = (t - t0) / (t1 - t0)`:

    `y(t) = y0 + Σₘ θᵐ coeffs[m - 1]`, for `m = 1, ..., degree`.

    The solvers of this package produce the collocation polynomial of the step in this
    form, so that dense output (`diffrax.SaveAt(ts=...)`, `diffrax.Solution.evaluate`)
    is accurate to the order of the method rather than linear.

    **Arguments:**

    - `t0`: The start of the step.
    - `t1`: The end of the step.
    - `y0`: The solution at `t0`.
    - `coeffs`: A PyTree of the same structure as `y0`, each leaf with an extra leading
        axis of length `degree` holding the coefficients of `θ, θ², ..., θᵈᵉᵍʳᵉᵉ`.
    """

    t0: RealScalarLike
    t1: RealScalarLike
    y0: Y
    coeffs: PyTree[Shaped[Array, "degree ?*y"], "Y"]

    def evaluate(
        self, t0: RealScalarLike, t1: RealScalarLike | None = None, left: bool = True
    ) -> PyTree[Array]:
        del left
        if t1 is not None:
            return jtu.tree_map(jnp.subtract, self.evaluate(t1), self.evaluate(t0))
        theta = linear_rescale(self.t0, t0, self.t1)

        def _evaluate(y0, coeffs):
            # Horner's scheme in θ; the constant term is y0.
            value = jnp.zeros_like(coeffs[0])
            with jax.numpy_dtype_promotion("standard"):
                for coeff in coeffs[::-1]:
                    value = (value + coeff) * theta
                return (y0 + value).astype(y0.dtype)

        return jtu.tree_map(_evaluate, self.y0, self.coeffs)

    def derivative(self, t: RealScalarLike, left: bool = True) -> PyTree[Array]:
        del left
        theta = linear_rescale(self.t0, t, self.t1)
        dt = jnp.where(self.t1 == self.t0, 1, jnp.asarray(self.t1) - self.t0)

        def _derivative(y0, coeffs):
            value = jnp.zeros_like(coeffs[0])
            degree = coeffs.shape[0]
            with jax.numpy_dtype_promotion("standard"):
                for power in range(degree, 0, -1):
                    value = value * theta + power * coeffs[power - 1]
                return (value / dt).astype(y0.dtype)

        return jtu.tree_map(_derivative, self.y0, self.coeffs)
