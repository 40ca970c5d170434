"""The control for several forced host devices (plain JAX, no package code): 4 forced
CPU devices, each LU-factorising its share of the batch of complex 8 x 8 systems in
one LAPACK call, so that batched calls of different devices run at the same time.
With `both`, each device's program also factorises an independent real batch (two
calls in one device's program, as in `xla_cpu_hang.py`).

    timeout 300 python benchmarks/xla_cpu_hang_devices.py [per_device] [calls] [both]

Prints progress and `done` if every call returned. See
docs/further_details/xla_cpu_hang.md.
"""

import os
import sys
import time


os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402


jax.config.update("jax_enable_x64", True)
per_device = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
calls = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
both = len(sys.argv) > 3 and sys.argv[3] == "both"

mesh = jax.make_mesh((4,), ("devices",))
rng = np.random.default_rng(0)
shape = (4 * per_device, 8, 8)
matrices = rng.normal(size=shape) + 4 * np.eye(8) + 1j * rng.normal(size=shape)
matrices = jax.device_put(matrices, NamedSharding(mesh, PartitionSpec("devices")))


@jax.jit
def factorise(matrices):
    lu, _, permutation = jax.lax.linalg.lu(matrices)
    total = jnp.sum(jnp.abs(lu)) + jnp.sum(permutation).astype(jnp.float64)
    if both:
        real_lu, _, _ = jax.lax.linalg.lu(jnp.real(matrices))
        total = total + jnp.sum(jnp.abs(real_lu))
    return total


start = time.perf_counter()
for call in range(calls):
    factorise(matrices).block_until_ready()
    if call % 100 == 0:
        print(f"call {call}: {time.perf_counter() - start:.1f} s", flush=True)
print(f"done: {calls} calls, {time.perf_counter() - start:.1f} s")
