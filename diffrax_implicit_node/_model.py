from collections.abc import Callable

import equinox as eqx
from jaxtyping import Array, PyTree, Scalar


class NeuralVectorField(eqx.Module):
    r"""The vector field $f(t, y, \mathrm{args}) = g(y) + k(t, y, \mathrm{args})$ of a
    neural ODE: a learned, autonomous part $g$ (such as a
    [`diffrax_implicit_node.PiNet`][]) plus an optional known part $k$, the physics
    that you already know.

    Pass it to [`diffrax_implicit_node.fit`][]; only the parameters of $g$ are trained
    (a known part may hold arrays too, and they stay as they are), and afterwards
    `to_sympy(trained.learned)` reads off the learned part.

    !!! Example

        ```python
        def forcing(t, y, args):
            return -2000.0 * jnp.exp(-t) * jnp.ones_like(y)

        field = NeuralVectorField(PiNet(1, 1, degree=1, width=4, key=key), forcing)
        ```
    """

    learned: Callable[[Array], Array]
    known: Callable[[Scalar, Array, PyTree], Array] | None = None

    def __call__(self, t: Scalar, y: Array, args: PyTree) -> Array:
        """**Arguments:**

        - `t`: The time.
        - `y`: The state, an array of shape `(n,)`.
        - `args`: Passed on to the known part.

        **Returns:**

        $g(y) + k(t, y, \\mathrm{args})$, an array of shape `(n,)`.
        """
        out = self.learned(y)
        if self.known is not None:
            out = out + self.known(t, y, args)
        return out
