"""Runs `fit` on 1 and on 4 (forced host) devices and writes what the tests compare,
as an .npz file: `python tests/data_parallel_checks.py OUT.npz`.

A subprocess of `tests/test_sharding.py`: the device count of the CPU platform is
fixed when JAX starts, so the four devices need their own process.
"""

import os
import sys


os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
)

import jax


jax.config.update("jax_enable_x64", True)

import contextlib
import io
import json
import pathlib
import tempfile

import diffrax_implicit_node as din
import jax.flatten_util
import jax.random as jr
import numpy as np
import optax
import optimistix as optx
import scipy.linalg
from diffrax_implicit_node._cli import main
from diffrax_implicit_node._data import as_observations
from diffrax_implicit_node._sharding import data_parallel
from diffrax_implicit_node._windows import windows_from


def data() -> tuple[np.ndarray, np.ndarray]:
    """Two trajectories of y' = A y + b, 8 observations each: 14 intervals, which
    4 devices share only with 2 of padding."""
    a = np.array([[-1.0, 0.5], [0.0, -3.0]])
    b = np.array([0.2, 1.0])
    ts = np.linspace(0.0, 1.4, 8)
    equilibrium = -np.linalg.solve(a, b)
    ys = [
        [equilibrium + scipy.linalg.expm(a * t) @ (y0 - equilibrium) for t in ts]
        for y0 in (np.array([1.0, 0.0]), np.array([0.0, 2.0]))
    ]
    return ts, np.asarray(ys)


def model() -> din.NeuralVectorField:
    return din.NeuralVectorField(din.PiNet(2, 2, degree=1, width=3, key=jr.key(0)))


def run(out: pathlib.Path) -> None:
    ts, ys = data()
    common = dict(solver=din.solver_from_name("backward-euler"), steps_per_interval=1)
    runs = dict(
        lm=dict(optimiser=optx.LevenbergMarquardt(rtol=1e-10, atol=1e-12), epochs=6),
        adam=dict(optimiser=optax.adam(1e-2), epochs=4),
        # Minibatches of 5: padded to 8 on 4 devices.
        minibatch=dict(
            optimiser=optax.adam(1e-2), epochs=3, batch_size=5, key=jr.key(3)
        ),
    )
    results = {}
    for name, options in runs.items():
        for devices in (1, 4):
            result = din.fit(
                model(),
                ts,
                ys,
                devices=devices,
                progress=False,
                **common,
                **options,
            )
            assert not result.stopped_early, result.message
            results[f"{name}_{devices}_losses"] = result.losses
            results[f"{name}_{devices}_params"] = jax.flatten_util.ravel_pytree(
                result.model
            )[0]
            results[f"{name}_{devices}_devices"] = result.devices
            # Statistics over the windows, which padding would change.
            results[f"{name}_{devices}_statistics"] = [
                result.verification.resolution,
                result.verification.discretisation_bias,
                *result.uncertainty.stderr,
            ]

    # Resuming across device counts: LM from 4 devices on 1, Adam from 1 on 4.
    with tempfile.TemporaryDirectory() as directory:
        for name, first, then in (("lm", 4, 1), ("adam", 1, 4)):
            path = pathlib.Path(directory) / f"{name}.eqx"
            options = dict(runs[name], **common, progress=False, checkpoint=path)
            epochs = options.pop("epochs")
            din.fit(model(), ts, ys, epochs=2, devices=first, **options)
            resumed = din.fit(model(), ts, ys, epochs=epochs, devices=then, **options)
            results[f"{name}_resumed_losses"] = resumed.losses
            results[f"{name}_resumed_params"] = jax.flatten_util.ravel_pytree(
                resumed.model
            )[0]

    # The layout itself: windows split across the 4 devices, padding weighted 0.
    parallel = data_parallel(4, 14, None)
    windows = parallel.shard_windows(windows_from(as_observations(ts, ys), 1))
    results["windows_spec"] = np.asarray(str(windows.y0.sharding.spec))
    results["windows_devices"] = len(windows.y0.sharding.device_set)
    results["windows_shard_shapes"] = np.asarray(
        [shard.data.shape for shard in windows.y0.addressable_shards]
    )
    results["windows_weight"] = np.asarray(windows.weight)
    results["windows_pad_y0"] = np.asarray(windows.y0[14:] - windows.y0[:1])

    # The command line, on the same data and model as the "lm" runs.
    with tempfile.TemporaryDirectory() as directory:
        csv = pathlib.Path(directory) / "data.csv"
        rows = [
            f"{b},{t:.17g},{y[0]:.17g},{y[1]:.17g}"
            for b, trajectory in enumerate(ys)
            for t, y in zip(ts, trajectory)
        ]
        csv.write_text("\n".join(["trajectory,t,x0,x1", *rows]) + "\n")
        for devices in ("1", "4"):
            json_path = pathlib.Path(directory) / f"{devices}.json"
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                status = main(
                    [
                        "fit",
                        str(csv),
                        "--devices",
                        devices,
                        "--solver",
                        "backward-euler",
                    ]
                    + ["--degree", "1", "--epochs", "6", "--steps", "1", "--quiet"]
                    + ["--out", str(json_path)]
                )
            assert status in (0, 3)  # 3: trained, but not verified (few epochs).
            results[f"cli_{devices}_printed"] = printed.getvalue()
            written = json.loads(json_path.read_text())
            results[f"cli_{devices}_json_devices"] = written["devices"]
            learned = written["equations"]
            results[f"cli_{devices}_coefficients"] = [
                learned[state][monomial]
                for state in sorted(learned)
                for monomial in sorted(learned[state])
            ]
    np.savez(out, **{k: np.asarray(v) for k, v in results.items()})


if __name__ == "__main__":
    run(pathlib.Path(sys.argv[1]))
