"""Data-parallel `fit` on several hosts: one process per host, each reading its own
trajectories. Launched by `fit_multihost.sbatch` (one task per node); see the
"Scaling out" page of the documentation. Not run in this repository's tests: it needs
a cluster.

    python examples/slurm/fit_multihost.py DATA_DIR [--epochs N] [--out result.json]

`DATA_DIR` holds `part-0.npz`, `part-1.npz`, ... (arrays `ts` and `ys`, as for the
command line's `fit`), one per process, each with a number of windows (gaps between
observations) that divides evenly among the node's GPUs.
"""

import argparse
import json
import pathlib

import jax


# Reads SLURM's environment (the coordinator's address, the process count and index)
# and connects the processes; afterwards `jax.devices()` lists every host's devices.
jax.distributed.initialize()
jax.config.update("jax_enable_x64", True)

import diffrax_implicit_node as din
import jax.random as jr
import numpy as np
import sympy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=pathlib.Path)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--degree", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path)
    options = parser.parse_args()

    # Process-local data: this host's own trajectories. `fit` lays each host's
    # windows on its own devices (`jax.make_array_from_process_local_data`); the
    # windows of all hosts together are the training set.
    with np.load(options.data / f"part-{jax.process_index()}.npz") as part:
        ts, ys = part["ts"], part["ys"]
    size = ys.shape[-1]
    model = din.NeuralVectorField(
        din.PiNet(size, size, options.degree, 3 * size, key=jr.key(0))
    )
    result = din.fit(
        model,  # The same initial model on every host: the same key.
        ts,
        ys,
        solver=din.solver_from_name("radau5"),
        optimiser=din.optimiser_from_name("levenberg-marquardt"),
        epochs=options.epochs,
        devices=jax.devices(),  # Every device of every host.
        checkpoint=options.data / "checkpoint.eqx",  # Written by process 0 only.
        progress=jax.process_index() == 0,
    )
    if jax.process_index() == 0:
        variables = sympy.symbols(f"x0:{size}")
        learned = din.to_sympy(result.model.learned, variables)
        print(f"{len(result.losses)} epochs on {result.devices} devices")
        print(din.equations_table({"learned": learned}, variables, digits=6))
        if options.out is not None:
            coefficients = {
                str(v): din.coefficients(e, variables)
                for v, e in zip(variables, learned)
            }
            options.out.write_text(json.dumps(coefficients, indent=2) + "\n")


if __name__ == "__main__":
    main()
