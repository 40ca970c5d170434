"""Training with fixed-step Radau IIA 5: time per optimiser step and peak memory, for
this package, a textbook implementation, and Diffrax's `Kvaerno5`.

    python benchmarks/training.py            # full run, a few minutes
    python benchmarks/training.py --quick    # smoke run

Writes `docs/benchmarks/training.md`.

The case: a vmapped batch of windows (pairs of consecutive states of a HIRES
trajectory, normalised per component), one solver step per window, a small MLP vector
field (8 -> 32 -> 32 -> 8, tanh), mean-squared loss on the end of each window, and one
Adam update per optimiser step. Variants:

- `package`: `RadauIIA5(root_finder=SimplifiedNewton(...))` through
  `diffrax_implicit_node.interval_predictions`, the forward pass of `fit`
  (`diffeqsolve` with `ConstantStepSize` and `DirectAdjoint`): one Jacobian of the
  vector field per step, W-transformed (one real and one complex n x n LU); gradients
  by the implicit function theorem with the exact stage Jacobian built from n
  Jacobian-vector products.
- `drop-in`: the same solver as a Diffrax user would write it: a plain
  `diffeqsolve(ODETerm(f), RadauIIA5(root_finder=SimplifiedNewton(...)), ...,
  stepsize_controller=ConstantStepSize())` with Diffrax's default
  `RecursiveCheckpointAdjoint` (which recomputes the step in the backward pass) and
  the solver's defaults (Jacobian reuse on).
- `drop-in, DirectAdjoint` (only with `--same-process`): the same with
  `adjoint=diffrax.DirectAdjoint()`, which does not recompute the step: the difference
  to `drop-in` is what the checkpointed adjoint's recomputation costs.
- `textbook`: written here. Full Newton on the 3n stage system
  `Z - h (A kron I) f(y0 + Z) = 0` with `optimistix.Newton`, which builds a fresh
  forward-mode Jacobian of the whole 3n residual (`jax.jacfwd`-equivalent) and a
  dense 3n x 3n LU every iteration; gradients by the implicit function theorem
  (`optimistix.ImplicitAdjoint`, the default), not by differentiating through the
  iterations.
- `kvaerno5`: Diffrax's `Kvaerno5` at the same constant step, through
  `interval_predictions` like `package`.

Each variant is timed in a fresh subprocess, one after the other, so their memory
does not mix. Peak memory is reported twice: the working memory XLA allocates for the
compiled optimiser step (`compiled.memory_analysis()`: temporaries + arguments +
outputs; `jax.devices()[0].memory_stats()` is unavailable on CPU), and the peak
resident set size of the subprocess (`resource.getrusage(...).ru_maxrss`, which also
counts Python, JAX and the compiler).
"""

import argparse
import faulthandler
import functools
import json
import os
import resource
import signal
import subprocess
import sys
import time

import jax


jax.config.update("jax_enable_x64", True)

import diffrax
import diffrax_implicit_node as din
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import scipy.integrate
from _problems import HIRES, machine_description, markdown_table, write_output


NEWTON_TOL = 1e-10
# Diffrax's VeryChord reports divergence for most windows at 1e-10 (its convergence
# test trips on round-off), so Kvaerno5 gets the tightest tolerance that works.
KVAERNO5_NEWTON_TOL = 1e-8
WIDTH = 32
LEARNING_RATE = 1e-3
VARIANTS = ("package", "drop-in", "textbook", "kvaerno5")
# `--same-process` times these together, interleaved, in this process.
SAME_PROCESS_VARIANTS = ("package", "drop-in", "drop-in, DirectAdjoint", "textbook")
ATTEMPTS = 3

_SQRT6 = np.sqrt(6)
# Radau IIA 5 written out independently of the package (Hairer & Wanner IV.5).
RADAU5_A = np.array(
    [
        [(88 - 7 * _SQRT6) / 360, (296 - 169 * _SQRT6) / 1800, (-2 + 3 * _SQRT6) / 225],
        [(296 + 169 * _SQRT6) / 1800, (88 + 7 * _SQRT6) / 360, (-2 - 3 * _SQRT6) / 225],
        [(16 - _SQRT6) / 36, (16 + _SQRT6) / 36, 1 / 9],
    ]
)


class VectorField(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(8, 8, WIDTH, depth=2, activation=jnp.tanh, key=key)

    def __call__(self, t, y, args):
        del t, args
        return self.mlp(y)


# Windows of the same length in every run; `--quick` only takes fewer of them.
WINDOW_INTERVALS = 2000


def make_windows(num_windows: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Consecutive states of HIRES at uniform times, each component divided by its
    largest value; returns (starts, ends, window length)."""
    ts = np.linspace(HIRES.t0, HIRES.t1, WINDOW_INTERVALS + 1)
    sol = scipy.integrate.solve_ivp(
        HIRES.rhs_numpy,
        (HIRES.t0, HIRES.t1),
        np.asarray(HIRES.y0),
        method="Radau",
        jac=HIRES.jacobian_numpy,
        t_eval=ts,
        rtol=1e-10,
        atol=1e-13,
    )
    ys = sol.y.T / np.abs(sol.y).max(axis=1)
    chosen = np.linspace(0, WINDOW_INTERVALS - 1, num_windows).astype(int)
    return ys[chosen], ys[chosen + 1], float(ts[1] - ts[0])


def _radau5():
    return din.RadauIIA5(
        root_finder=din.SimplifiedNewton(rtol=NEWTON_TOL, atol=NEWTON_TOL)
    )


def _interval_step(field, solver, y0, dt):
    y1, _ = din.interval_predictions(
        field, jnp.zeros(1), jnp.full(1, dt), y0[None], solver=solver
    )
    return y1[0]


def package_step(field, y0, dt):
    return _interval_step(field, _radau5(), y0, dt)


def drop_in_step(field, y0, dt, adjoint=diffrax.RecursiveCheckpointAdjoint()):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        _radau5(),
        0.0,
        dt,
        dt,
        y0,
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=1,
        adjoint=adjoint,
    )
    return sol.ys[-1]  # pyright: ignore[reportOptionalSubscript]


def kvaerno5_step(field, y0, dt):
    solver = diffrax.Kvaerno5(
        root_finder=diffrax.VeryChord(
            rtol=KVAERNO5_NEWTON_TOL, atol=KVAERNO5_NEWTON_TOL, norm=optx.max_norm
        )
    )
    return _interval_step(field, solver, y0, dt)


def textbook_step(field, y0, dt):
    a = jnp.asarray(RADAU5_A)

    def residual(stages, args):
        field, y0 = args
        derivatives = jax.vmap(lambda z: field(None, y0 + z, None))(stages)
        return stages - dt * a @ derivatives

    solution = optx.root_find(
        residual,
        optx.Newton(rtol=NEWTON_TOL, atol=NEWTON_TOL),
        jnp.zeros((3,) + y0.shape, y0.dtype),
        (field, y0),
        max_steps=20,
    )
    # Stiffly accurate: y1 = y0 + Z3.
    return y0 + solution.value[-1]


STEPS = {
    "package": package_step,
    "drop-in": drop_in_step,
    "drop-in, DirectAdjoint": functools.partial(
        drop_in_step, adjoint=diffrax.DirectAdjoint()
    ),
    "textbook": textbook_step,
    "kvaerno5": kvaerno5_step,
}


def loss_fn(field, starts, ends, dt, step):
    predictions = jax.vmap(lambda y0: step(field, y0, dt))(starts)
    return jnp.mean((predictions - ends) ** 2)


def make_train_step(variant: str, optimiser):
    step = STEPS[variant]

    @eqx.filter_jit
    def train_step(field, opt_state, starts, ends, dt):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(field, starts, ends, dt, step)
        updates, opt_state = optimiser.update(grads, opt_state)
        return eqx.apply_updates(field, updates), opt_state, loss, grads

    return train_step


def measure(variant: str, num_windows: int, num_steps: int) -> dict:
    """Compiles and times the optimiser step of one variant; run in a subprocess."""
    starts, ends, dt = make_windows(num_windows)
    starts, ends = jnp.asarray(starts), jnp.asarray(ends)
    field = VectorField(jax.random.key(0))
    optimiser = optax.adam(LEARNING_RATE)
    opt_state = optimiser.init(eqx.filter(field, eqx.is_array))
    train_step = make_train_step(variant, optimiser)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    start = time.perf_counter()
    compiled = train_step.lower(field, opt_state, starts, ends, dt).compile()
    compile_time = time.perf_counter() - start
    memory = compiled.compiled.memory_analysis()
    xla_bytes = (
        memory.temp_size_in_bytes
        + memory.argument_size_in_bytes
        + memory.output_size_in_bytes
    )

    field, opt_state, loss, grads = jax.block_until_ready(
        compiled(field, opt_state, starts, ends, dt)
    )
    first_loss = float(loss)
    # The gradient at the initial parameters, for the comparison between variants.
    first_grads = jax.flatten_util.ravel_pytree(eqx.filter(grads, eqx.is_array))[0]
    times = []
    for _ in range(num_steps):
        start = time.perf_counter()
        field, opt_state, loss, _ = jax.block_until_ready(
            compiled(field, opt_state, starts, ends, dt)
        )
        times.append(time.perf_counter() - start)
    return dict(
        variant=variant,
        compile=compile_time,
        median=float(np.median(times)),
        min=float(np.min(times)),
        xla_mib=xla_bytes / 2**20,
        temp_mib=memory.temp_size_in_bytes / 2**20,
        rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        rss_setup_mib=rss_before / 1024,
        first_loss=first_loss,
        last_loss=float(loss),
        first_grads=np.asarray(first_grads).tolist(),
    )


def measure_together(num_windows: int, num_steps: int) -> list[dict]:
    """Times `SAME_PROCESS_VARIANTS` in this process, on all its cores, one optimiser
    step of each in turn, so that they share the machine's load; wall and CPU time
    (all threads) per step."""
    starts, ends, dt = make_windows(num_windows)
    starts, ends = jnp.asarray(starts), jnp.asarray(ends)
    field = VectorField(jax.random.key(0))
    optimiser = optax.adam(LEARNING_RATE)
    opt_state = optimiser.init(eqx.filter(field, eqx.is_array))
    compiled = {}
    for variant in SAME_PROCESS_VARIANTS:
        train_step = make_train_step(variant, optimiser)
        start = time.perf_counter()
        compiled[variant] = train_step.lower(
            field, opt_state, starts, ends, dt
        ).compile()
        print(f"{variant}: compiled in {time.perf_counter() - start:.1f} s", flush=True)
        jax.block_until_ready(compiled[variant](field, opt_state, starts, ends, dt))
    walls = {variant: [] for variant in SAME_PROCESS_VARIANTS}
    cpus = {variant: [] for variant in SAME_PROCESS_VARIANTS}
    for _ in range(num_steps):
        for variant in SAME_PROCESS_VARIANTS:
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled[variant](field, opt_state, starts, ends, dt))
            walls[variant].append(time.perf_counter() - start)
            cpus[variant].append(time.process_time() - start_cpu)
    return [
        dict(
            variant=variant,
            median=float(np.median(walls[variant])),
            min=float(np.min(walls[variant])),
            cpu_median=float(np.median(cpus[variant])),
        )
        for variant in SAME_PROCESS_VARIANTS
    ]


def same_process_table(records: list[dict]) -> str:
    textbook = next(r for r in records if r["variant"] == "textbook")
    rows = [
        [
            r["variant"],
            r["median"] * 1e3,
            r["min"] * 1e3,
            r["cpu_median"] * 1e3,
            r["median"] / textbook["median"],
            r["cpu_median"] / textbook["cpu_median"],
        ]
        for r in records
    ]
    return markdown_table(
        [
            "variant",
            "step median (ms)",
            "step min (ms)",
            "CPU median (ms)",
            "time / textbook",
            "CPU / textbook",
        ],
        rows,
    )


def _pin_to_one_core():
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def measure_in_subprocess(variant: str, num_windows: int, num_steps: int) -> dict:
    command = [sys.executable, __file__, "--measure", variant]
    command += ["--windows", str(num_windows), "--steps", str(num_steps)]
    # Each measurement runs on one core, so that the timings compare single-threaded
    # work, and so that the variants that run concurrent batched LAPACK calls cannot
    # hang XLA:CPU's thread pool (see the README). A measurement takes well under a
    # minute; a stalled one is retried rather than hanging the run.
    for attempt in range(ATTEMPTS):
        try:
            out = subprocess.run(
                command,
                check=True,
                capture_output=True,
                text=True,
                timeout=150,
                preexec_fn=_pin_to_one_core,
            )
        except subprocess.TimeoutExpired:
            print(f"{variant}: measurement stalled, retrying", file=sys.stderr)
            continue
        record = json.loads(out.stdout.strip().splitlines()[-1])
        record["attempts"] = attempt + 1
        return record
    raise RuntimeError(f"{variant}: measurement stalled {ATTEMPTS} times")


def relative_difference(records: dict, key: str, a: str, b: str) -> float:
    """Max-norm difference of `key` between variants `a` and `b`, relative to `b`."""
    x, y = np.asarray(records[a][key]), np.asarray(records[b][key])
    return float(np.max(np.abs(x - y)) / np.max(np.abs(y)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, < 1 min")
    parser.add_argument("--windows", type=int, default=None)
    parser.add_argument(
        "--same-process",
        action="store_true",
        help=f"only time {', '.join(SAME_PROCESS_VARIANTS)} together in one process",
    )
    # Internal: measure one variant and print its record as JSON.
    parser.add_argument("--measure", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    num_windows = args.windows or (200 if args.quick else 2000)
    num_steps = args.steps or (3 if args.quick else 10)

    if args.measure is not None:
        # `kill -USR1 <pid>` prints where a stuck measurement is.
        faulthandler.register(signal.SIGUSR1)
        print(json.dumps(measure(args.measure, num_windows, num_steps)))
        return

    if args.same_process:
        faulthandler.dump_traceback_later(600, exit=True)
        records = measure_together(num_windows, num_steps)
        print(
            f"{machine_description()}\n\n{num_windows} windows, {num_steps} "
            "interleaved optimiser steps per variant, in one process on all its "
            f"cores:\n\n{same_process_table(records)}"
        )
        return

    records = [measure_in_subprocess(v, num_windows, num_steps) for v in VARIANTS]
    by_variant = {r["variant"]: r for r in records}
    grad_difference = relative_difference(
        by_variant, "first_grads", "package", "textbook"
    )
    loss_difference = relative_difference(
        by_variant, "first_loss", "package", "textbook"
    )

    textbook_time = next(r["median"] for r in records if r["variant"] == "textbook")
    rows = [
        [
            r["variant"],
            r["median"] * 1e3,
            r["min"] * 1e3,
            textbook_time / r["median"],
            r["compile"],
            r["xla_mib"],
            r["rss_mib"],
            r["rss_mib"] - r["rss_setup_mib"],
            f"{r['first_loss']:.4g} -> {r['last_loss']:.4g}",
            r["attempts"],
        ]
        for r in records
    ]
    table = markdown_table(
        [
            "variant",
            "step median (ms)",
            "step min (ms)",
            "speed-up vs textbook",
            "compile (s)",
            "XLA memory (MiB)",
            "peak RSS (MiB)",
            "RSS growth from compile+run (MiB)",
            "loss",
            "attempts",
        ],
        rows,
    )
    suffix = "_quick" if args.quick else ""
    text = (
        f"{machine_description()}\n\n"
        f"{num_windows} windows of length {HIRES.t1 / WINDOW_INTERVALS:.4g} (HIRES, "
        f"normalised), one step each, MLP 8-{WIDTH}-{WIDTH}-8, Adam; Newton "
        f"tolerances {NEWTON_TOL:g} (Kvaerno5: {KVAERNO5_NEWTON_TOL:g}, VeryChord "
        "with the max norm). Time per optimiser step (loss, gradient, "
        f"update): median and minimum of {num_steps} steps after one warm-up. XLA "
        "memory: temporaries + arguments + outputs of the compiled step. Peak RSS: "
        "the variant's own subprocess. Each variant runs in its own subprocess on "
        "one core (see `benchmarks/README.md`).\n\n"
        f"{table}\n\n"
        "Gradient check, package vs textbook, at the initial parameters: relative "
        f"max-norm difference of the loss gradients {grad_difference:.2e}, of the "
        f"losses {loss_difference:.2e}.\n"
    )
    write_output(f"training{suffix}.md", text)
    print(text)
    if grad_difference > 1e-6:
        raise SystemExit("Gradients of package and textbook differ by more than 1e-6.")


if __name__ == "__main__":
    main()
