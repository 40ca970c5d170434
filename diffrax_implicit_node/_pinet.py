import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, PRNGKeyArray


class PiNet(eqx.Module):
    r"""A polynomial neural network: the Π-net of Chrysos et al. in its "CCP" form.

    With linear layers $L_1, \dots, L_d$ (from `in_size` to `width` features), an
    output layer $C$ (from `width` to `out_size`) and an output bias $\beta$,

    $$h_1 = L_1(x), \qquad h_k = L_k(x) \odot h_{k-1} + h_{k-1} \quad
    (k = 2, \dots, d), \qquad \mathrm{PiNet}(x) = C\,h_d + \beta.$$

    There are no activation functions: each layer raises the degree by at most one, so
    every output is a polynomial of total degree at most $d$ = `degree` in $x$, which
    [`diffrax_implicit_node.to_sympy`][] writes out as formulas. Used as the right-hand
    side of an ODE it learns polynomial vector fields, as in the polynomial neural ODEs
    of Fronk & Petzold.

    The output layer $C$ and the bias $\beta$ start at zero, so an untrained PiNet is
    the vector field $0$: the first solves of training are as easy as solves get, and no
    randomly initialised stiffness makes an implicit solver's Newton iteration fail
    before training has begun. The hidden layers start at random, so the gradient with
    respect to $C$ is nonzero from the first step.

    Works with inputs of any floating dtype (promoted with the parameters as usual),
    and under `jax.jit`, `jax.vmap` and `jax.grad`.

    ??? cite "References"

        ```bibtex
        @article{chrysos2022deep,
            title={Deep Polynomial Neural Networks},
            author={Chrysos, Grigorios G. and Moschoglou, Stylianos and Bouritsas,
                    Giorgos and Deng, Jiankang and Panagakis, Yannis and
                    Zafeiriou, Stefanos},
            journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},
            volume={44},
            number={8},
            pages={4021--4034},
            year={2022}
        }

        @article{fronk2024neural,
            title={Neural ODEs for Stiff Systems: Implicit Single-Step Methods},
            author={Fronk, Colby and Petzold, Linda},
            journal={arXiv:2410.05592},
            year={2024}
        }
        ```
    """

    layers: tuple[eqx.nn.Linear, ...]
    output: eqx.nn.Linear
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    degree: int = eqx.field(static=True)
    width: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        degree: int,
        width: int,
        *,
        dtype=None,
        key: PRNGKeyArray,
    ):
        r"""**Arguments:**

        - `in_size`: The number of inputs, e.g. the dimension of the ODE's state.
        - `out_size`: The number of outputs, e.g. the dimension of the ODE's state.
        - `degree`: The largest total degree of the output polynomials, at least 1.
        - `width`: The number of features of the hidden layers $h_k$. A polynomial of
            degree $d$ in $n$ variables has $\binom{n + d}{d}$ coefficients, and
            `width` of the order of that number lets the network represent any of
            them.
        - `dtype`: The dtype of the parameters. Defaults to JAX's default floating
            dtype (`float32`, or `float64` when `jax_enable_x64` is set).
        - `key`: A `jax.random.PRNGKey` for the initialisation of the hidden layers.
        """
        for name, value, smallest in (
            ("in_size", in_size, 1),
            ("out_size", out_size, 1),
            ("degree", degree, 1),
            ("width", width, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{name}` must be an integer, got {value!r}.")
            if value < smallest:
                raise ValueError(f"`{name}` must be at least {smallest}, got {value}.")
        hidden_key, output_key = jr.split(key)
        self.layers = tuple(
            eqx.nn.Linear(in_size, width, dtype=dtype, key=layer_key)
            for layer_key in jr.split(hidden_key, degree)
        )
        output = eqx.nn.Linear(width, out_size, dtype=dtype, key=output_key)
        self.output = eqx.tree_at(
            lambda linear: (linear.weight, linear.bias),
            output,
            replace_fn=jnp.zeros_like,
        )
        self.in_size = in_size
        self.out_size = out_size
        self.degree = degree
        self.width = width

    def __call__(self, x: ArrayLike) -> Array:
        """**Arguments:**

        - `x`: The input, an array of shape `(in_size,)`.

        **Returns:**

        The output, an array of shape `(out_size,)`.
        """
        x = jnp.asarray(x)
        if x.shape != (self.in_size,):
            raise ValueError(
                f"PiNet expects an input of shape ({self.in_size},), got shape "
                f"{x.shape}; use `jax.vmap` for a batch of inputs."
            )
        first, *rest = self.layers
        # The input may differ in dtype from the parameters, which `eqx.nn.Linear`
        # combines with it: promote them as documented, whatever the global setting.
        with jax.numpy_dtype_promotion("standard"):
            hidden = first(x)
            for layer in rest:
                hidden = layer(x) * hidden + hidden
            return self.output(hidden)
