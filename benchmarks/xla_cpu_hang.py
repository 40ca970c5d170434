"""Plain-JAX reproducer of an XLA:CPU hang (no package code): a `jit(vmap(...))` over
2000 systems that LU-factorises a real and an independent complex 8 x 8 matrix, as
Radau IIA 5's Newton iteration does, and solves with both. On a 2-core machine with
jaxlib 0.10.2 it usually stops within a few calls, at 0 % CPU, and never returns.

    python benchmarks/xla_cpu_hang.py [batch] [calls]

See docs/further_details/xla_cpu_hang.md.
"""

import sys
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
from jax.scipy.linalg import lu_factor, lu_solve


def two_solves(a, b):
    real = lu_factor(a)
    complex_ = lu_factor(a.astype(jnp.complex128) * (1 + 1j) + 3j * jnp.eye(8))
    return lu_solve(real, b), lu_solve(complex_, b.astype(jnp.complex128))


def main():
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (batch, 8, 8)) + 8 * jnp.eye(8)
    b = jax.random.normal(key_b, (batch, 8))
    solve = jax.jit(jax.vmap(two_solves))
    start = time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(solve(a, b))
    print(f"{calls} calls over {batch} systems: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
