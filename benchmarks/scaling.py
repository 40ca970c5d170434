"""Data-parallel training: time per epoch and memory per device against the number
of devices, for Levenberg--Marquardt and Adam.

    python benchmarks/scaling.py            # 2,000 to 20,000 windows, tens of minutes
    python benchmarks/scaling.py --quick    # 200 to 800 windows, a few minutes
    python benchmarks/scaling.py --platform gpu --devices 1 2 4 8   # on GPUs

Writes `docs/benchmarks/scaling.md` (`scaling_quick.md` with `--quick`).

On CPU the devices are forced host devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`): one process, one machine's
cores split between them. That shows that the answer does not change and how memory
per device falls; it cannot show a speed-up when the cores are fewer than the
devices. On GPUs, each device is a GPU.

The problem: a stiff linear system y' = A y, eigenvalues -1 and -100, observed at 50
uniform gaps on [0, 2] along many trajectories from random starts; one window per gap
(so windows = 50 x trajectories), one `RadauIIA3` step per window (`--solver`); the
model a `PiNet` of degree 2 and width 6 (50 parameters). Each configuration runs in its
own subprocess: it builds and compiles the step `fit` takes each epoch on the given
devices, times `EPOCHS` calls of it (the epoch time is the minimum), and reads the per-
device working memory of the compiled step from XLA (`compiled.memory_analysis()`:
temporaries + arguments + outputs - aliased; the same program runs on every device).
Strong scaling: the same windows on 1, 2, 4 devices; weak scaling: the same windows per
device.
"""

import argparse
import json
import os
import subprocess
import sys
import time


EPOCHS = 4
TIMEOUT = 900  # Seconds per configuration; see the XLA:CPU note in the output.
GAPS = 50


def child(config: dict) -> dict:
    """Runs in the subprocess: one configuration."""
    import resource

    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax_implicit_node as din
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax
    import optimistix as optx
    import scipy.linalg
    from diffrax_implicit_node._data import as_observations
    from diffrax_implicit_node._optimise import (
        _least_squares_step,
        _train_step,
        LeastSquares,
        optimisation,
    )
    from diffrax_implicit_node._sharding import data_parallel
    from diffrax_implicit_node._windows import Residuals, windows_from

    num_trajectories = config["windows"] // GAPS
    a = np.array([[-1.0, 1.0], [0.0, -100.0]])
    ts = np.linspace(0.0, 2.0, GAPS + 1)
    propagator = scipy.linalg.expm(a * (ts[1] - ts[0]))
    states = [np.random.default_rng(0).uniform(-1, 1, (num_trajectories, 2))]
    for _ in range(GAPS):
        states.append(states[-1] @ propagator.T)
    ys = np.stack(states, axis=1)

    optimiser = (
        optx.LevenbergMarquardt(rtol=1e-10, atol=1e-12)
        if config["optimiser"] == "levenberg-marquardt"
        else optax.adam(1e-3)
    )
    model = din.NeuralVectorField(din.PiNet(2, 2, degree=2, width=6, key=jr.key(0)))
    solver = din.solver_from_name(config["solver"])
    devices = jax.devices()[: config["devices"]]
    # The pieces `fit` builds, so that the step can be timed and inspected alone.
    windows = windows_from(as_observations(ts, ys), 1)
    parallel = data_parallel(devices, config["windows"], None)
    strategy = optimisation(optimiser, config["windows"], None, None, parallel)
    trainable, frozen = eqx.partition(model, eqx.is_inexact_array)
    trainable, frozen, scale = parallel.replicate(
        (trainable, frozen, jnp.ones(2, dtype=jnp.float64))
    )
    residuals = Residuals(
        frozen, parallel.shard_windows(windows), scale, solver, 1, args=None
    )
    state = parallel.lay_out_state(strategy.init(trainable, residuals), 2)
    if isinstance(strategy, LeastSquares):
        step_fn, static = _least_squares_step, (strategy.solver, residuals)
    else:
        step_fn, static = _train_step, (optimiser, residuals, None)
    start = time.perf_counter()
    compiled = step_fn.lower(trainable, state, *static).compile()
    compile_time = time.perf_counter() - start
    times, losses = [], []
    for _ in range(EPOCHS):
        start = time.perf_counter()
        trainable, state, loss, *_ = compiled(trainable, state, *static)
        losses.append(float(loss))  # Waits for the step.
        times.append(time.perf_counter() - start)
    memory = compiled.compiled.memory_analysis()
    per_device = (
        memory.temp_size_in_bytes
        + memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
    )
    windows_per_device = residuals.windows.y0.addressable_shards[0].data.shape[0]
    return dict(
        compile=compile_time,
        epoch=min(times),
        memory_mb=per_device / 2**20,
        rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
        windows_per_device=windows_per_device,
        losses=losses,
    )


def run_config(config: dict, platform: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=platform)
    if platform == "cpu":
        # Every configuration sees the same 4 devices, whichever it uses.
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
        )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    try:
        completed = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout after {TIMEOUT} s")
    if completed.returncode != 0:
        return dict(error=completed.stderr.strip().splitlines()[-1][:120])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--platform", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--solver", default="radau3", help="default: radau3")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(json.loads(options.child))))
        return

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _problems import machine_description, markdown_table, write_output

    strong = [200, 800] if options.quick else [2000, 20000]
    per_device = 200 if options.quick else 5000
    sections = [machine_description()]
    if options.platform == "cpu":
        sections[0] += (
            " Devices: forced host devices sharing these cores (not a speed-up test)."
        )
    for optimiser in ("levenberg-marquardt", "adam"):
        for kind, sizes in (
            ("strong", [(w, d) for w in strong for d in options.devices]),
            ("weak", [(per_device * d, d) for d in options.devices]),
        ):
            rows = []
            for windows, devices in sizes:
                config = dict(
                    optimiser=optimiser,
                    windows=windows,
                    devices=devices,
                    solver=options.solver,
                )
                result = run_config(config, options.platform)
                print(config, result, flush=True)
                if "error" in result:
                    rows.append([windows, devices, result["error"], "", "", "", ""])
                    continue
                rows.append(
                    [
                        windows,
                        devices,
                        result["windows_per_device"],
                        result["compile"],
                        result["epoch"],
                        result["memory_mb"],
                        f"{result['losses'][-1]:.12e}",
                    ]
                )
            headers = [
                "windows",
                "devices",
                "windows / device",
                "compile (s)",
                "epoch (s)",
                "memory / device (MB)",
                f"loss after {EPOCHS} epochs",
            ]
            sections.append(
                f"**{optimiser}, {kind} scaling**\n\n{markdown_table(headers, rows)}"
            )
    sections.append(
        "A configuration that times out on CPU may have hit the XLA:CPU hang of "
        "batched LAPACK calls on few cores (it sits at 0 % CPU); rerun it alone."
    )
    text = "\n\n".join(sections) + "\n"
    print(text)
    path = write_output("scaling_quick.md" if options.quick else "scaling.md", text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
