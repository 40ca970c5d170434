"""Does training hang? Repeated 2000-window `value_and_grad` loops, each in a fresh
subprocess with a watchdog.

    python benchmarks/hangs.py            # 20 runs of each variant
    python benchmarks/hangs.py --quick    # 3 runs of each variant
    python benchmarks/hangs.py --runs 5 --variants package reproducer

XLA:CPU (jaxlib 0.10-0.11) can hang a program that runs two large batched LAPACK
calls at the same time (see `docs/further_details/xla_cpu_hang.md`). This hang
waits in futexes at 0 % CPU, so a run counts as hung once its process has used no CPU
for `--idle` seconds (Linux: read from `/proc`), and as slow if it is still computing
after `--timeout` seconds. Variants:

- `package`: the loss of a small MLP vector field (8 -> 32 -> 32 -> 8) on windows of
  HIRES data through `diffrax_implicit_node.interval_predictions` (the forward pass
  of `fit`: one `RadauIIA5` step per window, `DirectAdjoint`), `value_and_grad`
  evaluated `--loops` times.
- `diffeqsolve`: the same through a plain `diffeqsolve` with `RadauIIA5` and
  Diffrax's default `RecursiveCheckpointAdjoint`.
- `fit`: a whole `diffrax_implicit_node.fit` as `reproduce hires` runs it (1,980
  windows of HIRES data, a degree-2 polynomial library, Levenberg-Marquardt), for
  `--loops` epochs with one step per window, then its verification and standard
  errors: every compiled program a user's fit runs, not only the training step.
- `reproducer`: the control, plain JAX without this package
  (`benchmarks/xla_cpu_hang.py`); with an affected jaxlib on few cores it hangs.

Prints a table; writes nothing.
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time


HERE = pathlib.Path(__file__).resolve().parent
VARIANTS = ("package", "diffeqsolve", "fit", "reproducer")
NEWTON_TOL = 1e-10


def run_fit(epochs: int) -> None:
    """The body of one `fit` run."""
    import jax

    jax.config.update("jax_enable_x64", True)

    import diffrax_implicit_node as din
    from diffrax_implicit_node._examples import EXAMPLES

    example = EXAMPLES["hires"]
    ts, ys = example.data(example.points)
    result = din.fit(
        example.model(jax.random.key(0)),
        ts,
        ys,
        solver=din.solver_from_name("radau5"),
        optimiser=din.optimiser_from_name("levenberg-marquardt"),
        epochs=epochs,
        steps_per_interval=1,
        progress=False,
    )
    print(f"loss {result.losses[-1]:.6e}, {len(result.uncertainty.names)} stderrs")


def run_loops(variant: str, num_windows: int, loops: int) -> None:
    """The body of one run: compile, then evaluate the loss and gradient `loops`
    times."""
    import jax

    jax.config.update("jax_enable_x64", True)

    import diffrax
    import diffrax_implicit_node as din
    import equinox as eqx
    import jax.numpy as jnp
    from training import make_windows, VectorField

    starts, ends, dt = make_windows(num_windows)
    solver = din.RadauIIA5(
        root_finder=din.SimplifiedNewton(rtol=NEWTON_TOL, atol=NEWTON_TOL)
    )

    def predict(field, y0):
        if variant == "package":
            y1, _ = din.interval_predictions(
                field, jnp.zeros(1), jnp.full(1, dt), y0[None], solver=solver
            )
            return y1[0]
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(field), solver, 0.0, dt, dt, y0, max_steps=1
        )
        return solution.ys[-1]  # pyright: ignore[reportOptionalSubscript]

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def loss(field, starts, ends):
        predictions = jax.vmap(lambda y0: predict(field, y0))(starts)
        return jnp.mean((predictions - ends) ** 2)

    field = VectorField(jax.random.key(0))
    starts, ends = jnp.asarray(starts), jnp.asarray(ends)
    for _ in range(loops):
        value, grads = loss(field, starts, ends)
        jax.block_until_ready(grads)
    print(f"loss {float(value):.6e}")


def cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used so far (Linux), or None where unknown."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime, fields 14 and 15 of proc(5), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(variant: str, args: argparse.Namespace) -> dict:
    """Runs one subprocess. It counts as hung once it has used no CPU for
    `args.idle` seconds (this hang waits in futexes at 0 % CPU), and as slow if it
    is still computing after `args.timeout` seconds."""
    if variant == "reproducer":
        command = [sys.executable, str(HERE / "xla_cpu_hang.py"), str(args.windows)]
    else:
        command = [sys.executable, __file__, "--run", variant]
        command += ["--windows", str(args.windows), "--loops", str(args.loops)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    # A file, not a pipe: a child blocked on a full pipe would look hung.
    stderr = tempfile.TemporaryFile("w+")
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env
    )
    last_cpu, last_progress = cpu_seconds(process.pid), start
    outcome = None
    while process.poll() is None:
        time.sleep(1)
        now, cpu = time.perf_counter(), cpu_seconds(process.pid)
        if cpu is not None and cpu != last_cpu:
            last_cpu, last_progress = cpu, now
        if now - last_progress > args.idle:
            outcome = "hung"
        elif now - start > args.timeout:
            outcome = "slow"
        if outcome is not None:
            process.kill()
            process.wait()
            return dict(outcome=outcome, seconds=now - start)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        stderr.seek(0)
        print(stderr.read()[-2000:], file=sys.stderr)
        return dict(outcome="failed", seconds=seconds)
    return dict(outcome="finished", seconds=seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of each variant")
    parser.add_argument("--runs", type=int, default=None, help="runs per variant")
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--loops", type=int, default=20, help="gradients per run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument(
        "--idle", type=float, default=30, help="seconds at 0 %% CPU that mean hung"
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    # Internal: one run of one variant, in this subprocess.
    parser.add_argument("--run", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run == "fit":
        run_fit(args.loops)
        return
    if args.run is not None:
        run_loops(args.run, args.windows, args.loops)
        return
    runs = args.runs or (3 if args.quick else 20)

    rows = []
    for variant in args.variants:
        records = []
        for index in range(runs):
            record = one_run(variant, args)
            print(f"{variant} run {index + 1}/{runs}: {record['outcome']}", flush=True)
            records.append(record)
        finished = [r["seconds"] for r in records if r["outcome"] == "finished"]
        rows.append(
            (
                variant,
                runs,
                len(finished),
                sum(r["outcome"] == "hung" for r in records),
                sum(r["outcome"] == "slow" for r in records),
                sum(r["outcome"] == "failed" for r in records),
                f"{statistics.median(finished):.1f}" if finished else "-",
            )
        )

    import jax

    print(
        f"\n{args.windows} windows, {args.loops} gradients per run; hung: no CPU "
        f"used for {args.idle:g} s, slow: still running after {args.timeout:g} s "
        f"(median s: of the finished runs); jax {jax.__version__}, "
        f"{os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}\n"
    )
    headers = ("variant", "runs", "finished", "hung", "slow", "failed", "median s")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


if __name__ == "__main__":
    main()
