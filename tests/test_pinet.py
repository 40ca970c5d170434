import math

import diffrax_implicit_node as din
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import without_runtime_type_checks


def random_pinet(in_size, out_size, degree, width, seed=0):
    """A PiNet whose output layer is random too (it starts at zero)."""
    model = din.PiNet(in_size, out_size, degree, width, key=jr.key(seed))
    weight_key, bias_key = jr.split(jr.key(seed + 1))
    return eqx.tree_at(
        lambda m: (m.output.weight, m.output.bias),
        model,
        (
            jr.normal(weight_key, (out_size, width)),
            jr.normal(bias_key, (out_size,)),
        ),
    )


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_output_is_polynomial_of_given_degree(degree):
    # Along any line x0 + s v, the output is a polynomial of degree `degree` in s:
    # finite differences of order degree + 1 vanish, those of order `degree` do not.
    model = random_pinet(3, 2, degree, 5)
    x0, direction = jr.normal(jr.key(2), (2, 3))
    s = jnp.arange(degree + 2, dtype=jnp.float64)
    values = jax.vmap(lambda s: model(x0 + s * direction))(s)
    scale = jnp.max(jnp.abs(values))
    highest = np.diff(np.asarray(values), n=degree + 1, axis=0)
    leading = np.diff(np.asarray(values)[:-1], n=degree, axis=0)
    assert np.max(np.abs(highest)) < 1e-10 * scale
    assert np.min(np.abs(leading)) > 1e-6 * scale


def test_untrained_output_is_zero():
    model = din.PiNet(3, 2, 2, 6, key=jr.key(0))
    assert jnp.all(model(jnp.array([1.0, -2.0, 3.0])) == 0)


def test_jit_vmap_grad_and_dtypes():
    model = random_pinet(2, 2, 3, 4)
    xs = jr.normal(jr.key(3), (5, 2))
    batched = eqx.filter_jit(jax.vmap(model))(xs)
    assert batched.shape == (5, 2)
    np.testing.assert_allclose(batched[1], model(xs[1]), rtol=1e-12)

    grads = eqx.filter_grad(lambda m, x: jnp.sum(m(x) ** 2))(model, xs[0])
    assert all(jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))

    assert model(xs[0].astype(jnp.float32)).dtype == jnp.float64
    single = din.PiNet(2, 2, 2, 4, dtype=jnp.float32, key=jr.key(0))
    assert single(jnp.ones(2, dtype=jnp.float32)).dtype == jnp.float32
    assert single(jnp.ones(2, dtype=jnp.int32)).dtype == jnp.float32


def test_width_suffices_for_every_monomial():
    # With width >= the number of monomials, the hidden features span all
    # polynomials of the degree: the output layer alone can fit any of them.
    degree, size = 2, 2
    width = math.comb(size + degree, degree)
    model = din.PiNet(size, 1, degree, width, key=jr.key(0))
    xs = jr.normal(jr.key(1), (50, size))
    first, *rest = model.layers

    def features(x):
        hidden = first(x)
        for layer in rest:
            hidden = layer(x) * hidden + hidden
        return hidden

    assert np.linalg.matrix_rank(np.asarray(jax.vmap(features)(xs))) == width


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(degree=0), ValueError),
        (dict(width=0), ValueError),
        (dict(in_size=0), ValueError),
        (dict(degree=2.0), TypeError),
        (dict(width=True), TypeError),
    ],
)
def test_bad_arguments(kwargs, error):
    arguments = dict(in_size=2, out_size=2, degree=2, width=3) | kwargs
    with without_runtime_type_checks(), pytest.raises(error, match=next(iter(kwargs))):
        din.PiNet(**arguments, key=jr.key(0))


def test_bad_input_shape():
    model = din.PiNet(3, 1, 2, 3, key=jr.key(0))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        model(jnp.ones((4, 3)))
