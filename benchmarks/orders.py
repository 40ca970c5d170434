"""Work-precision across orders: `RadauIIA5`, `RadauIIA9`, `RadauIIA13` and
`AdaptiveRadau` (which switches between them) against Diffrax's `Kvaerno5` and SciPy's
`Radau`, on HIRES, van der Pol (mu = 1000) and Robertson at rtol from 1e-6 to 1e-13.

    python benchmarks/orders.py            # full run, tens of minutes on 2 cores
    python benchmarks/orders.py --quick    # smoke run: 2 tolerances, 3 solvers

Writes `docs/benchmarks/orders.md` and `docs/benchmarks/orders.png` (`orders_quick.*`
for the smoke run).

- Tolerances: `PIDController(rtol, atol=rtol x scale)` (defaults otherwise, `dt0=None`)
  with scale 1e-3 for HIRES, 1 for van der Pol and 1e-8 for Robertson (whose y2 is
  1e-8 at t1 = 1e5); the same numbers go to SciPy, which gets the analytic Jacobian.
  Newton tolerances come from the controller (the solvers' defaults).
- Error: the largest componentwise relative error at t1 against SciPy `Radau` at
  rtol 1e-13. As a check of that reference, the text gives how far `RadauIIA13` at
  rtol 1e-14 is from it: errors below that level are not resolved.
- Times: compile time is `jit(...).lower(...).compile()` (the tolerance is traced,
  so one compilation per solver and problem); warm time is the minimum of several
  runs of the compiled solve, waited for with `jax.block_until_ready`.
- `AdaptiveRadau`'s attempted steps per order are counted in a separate, untimed
  run, by a subclass whose step reports the order it used to the host.
"""

import argparse
import collections
import functools
import time

import jax


jax.config.update("jax_enable_x64", True)

import adaptive
import diffrax
import diffrax_implicit_node as din
import jax.numpy as jnp
import numpy as np
from _problems import (
    HIRES,
    machine_description,
    markdown_table,
    OUTPUT_DIR,
    Problem,
    reference_solution,
    relative_error,
    ROBERTSON,
    scipy_solve,
    VAN_DER_POL,
    write_output,
)
from adaptive import interpolate_at_error, plot


RTOLS = (1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13)
QUICK_RTOLS = (1e-6, 1e-10)
REFERENCE_RTOL = 1e-13
MAX_STEPS = 500_000

JAX_SOLVERS = {
    "RadauIIA5": din.RadauIIA5,
    "RadauIIA9": din.RadauIIA9,
    "RadauIIA13": din.RadauIIA13,
    "AdaptiveRadau": din.AdaptiveRadau,
    "diffrax.Kvaerno5": diffrax.Kvaerno5,
}
QUICK_SOLVERS = ("RadauIIA5", "RadauIIA13", "AdaptiveRadau")
ORDERS = (5, 9, 13)


class _OrderReportingRadau(din.AdaptiveRadau):
    """`AdaptiveRadau` whose every step attempt reports its order to the host."""

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        out = super().step(terms, t0, t1, y0, args, solver_state, made_jump)
        jax.debug.callback(
            lambda m: _ORDER_COUNTS.update([int(m)]), solver_state.method
        )
        return out


_ORDER_COUNTS: collections.Counter = collections.Counter()


def make_solve(problem: Problem, solver: diffrax.AbstractSolver):
    return adaptive.make_solve(
        problem, solver, diffrax.PIDController, problem.vector_field, MAX_STEPS
    )


def min_time(fn, repeats: int, budget: float = 5.0) -> float:
    """The fastest of up to `repeats` runs, fewer (but at least two) once they have
    taken `budget` seconds."""
    times = []
    while len(times) < repeats and (len(times) < 2 or sum(times) < budget):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def attempts_per_order(problem: Problem, rtol: float) -> str:
    _ORDER_COUNTS.clear()
    solve = jax.jit(make_solve(problem, _OrderReportingRadau()))
    jax.block_until_ready(solve(jnp.asarray(rtol)))
    jax.effects_barrier()
    return "/".join(str(_ORDER_COUNTS[index]) for index in range(len(ORDERS)))


def reference_check(problem: Problem, reference: np.ndarray) -> float:
    """How far `RadauIIA13` at rtol 1e-14, a method independent of SciPy's, is from
    the reference."""
    solve = jax.jit(make_solve(problem, din.RadauIIA13()))
    y1, *_ = solve(jnp.asarray(1e-14))
    return relative_error(y1, reference, problem.error_floor)


def run_jax(problem, rtols, repeats, solvers, reference) -> list[dict]:
    records = []
    for name in solvers:
        example_rtol = jnp.asarray(rtols[0])
        start = time.perf_counter()
        solve = (
            jax.jit(make_solve(problem, JAX_SOLVERS[name]()))
            .lower(example_rtol)
            .compile()
        )
        compile_time = time.perf_counter() - start
        for rtol in rtols:
            rtol_array = jnp.asarray(rtol)
            y1, success, accepted, rejected = solve(rtol_array)
            records.append(
                dict(
                    problem=problem.name,
                    rtol=rtol,
                    solver=name,
                    success=bool(success),
                    error=relative_error(y1, reference, problem.error_floor),
                    accepted=int(accepted),
                    rejected=int(rejected),
                    orders=(
                        attempts_per_order(problem, rtol)
                        if name == "AdaptiveRadau"
                        else ""
                    ),
                    compile=compile_time,
                    time=min_time(functools.partial(solve, rtol_array), repeats),
                )
            )
            print(records[-1], flush=True)
    return records


def run_scipy(problem, rtols, repeats, reference) -> list[dict]:
    records = []
    for rtol in rtols:
        solve = functools.partial(scipy_solve, problem, rtol)

        sol = solve()
        records.append(
            dict(
                problem=problem.name,
                rtol=rtol,
                solver="scipy Radau",
                success=bool(sol.success),
                error=relative_error(sol.y[:, -1], reference, problem.error_floor),
                accepted=len(sol.t) - 1,
                rejected=np.nan,
                orders="",
                compile=np.nan,
                time=min_time(solve, repeats),
            )
        )
        print(records[-1], flush=True)
    return records


def results_table(records: list[dict]) -> str:
    rows = [
        [
            r["problem"],
            f"{r['rtol']:.0e}",
            r["solver"],
            f"{r['error']:.2e}" if r["success"] else f"failed ({r['error']:.1e})",
            r["accepted"],
            "–" if np.isnan(r["rejected"]) else r["rejected"],
            r["orders"] or "–",
            r["compile"],
            r["time"] * 1e3,
        ]
        for r in records
    ]
    return markdown_table(
        [
            "problem",
            "rtol",
            "solver",
            "rel. error",
            "accepted",
            "rejected",
            "attempts at order 5/9/13",
            "compile (s)",
            "warm (ms)",
        ],
        rows,
    )


def matched_error_table(records: list[dict], problems: list[Problem]) -> str:
    """`AdaptiveRadau`'s warm time beside the others' at the same error."""
    others = [
        s for s in dict.fromkeys(r["solver"] for r in records) if s != "AdaptiveRadau"
    ]
    rows = []
    for problem in problems:
        mine = [r for r in records if r["problem"] == problem.name]
        for r in mine:
            if r["solver"] != "AdaptiveRadau" or not r["success"]:
                continue
            row = [problem.name, f"{r['rtol']:.0e}", f"{r['error']:.2e}"]
            row.append(r["time"] * 1e3)
            for other in others:
                row.append(_time_at_error(mine, other, r["error"]) * 1e3)
            rows.append(row)
    return markdown_table(
        ["problem", "rtol", "AdaptiveRadau error", "AdaptiveRadau (ms)"]
        + [f"{other} (ms)" for other in others],
        rows,
    )


def _time_at_error(records: list[dict], solver: str, error: float) -> float:
    """`solver`'s warm time at `error`, interpolated log-log between its runs (not
    counting a run that is the reference itself, at error 0)."""
    runs = [r for r in records if r["solver"] == solver and r["error"] > 0]
    return interpolate_at_error(runs, "time", error)


def against_radau5_table(records: list[dict], problems: list[Problem]) -> str:
    """`RadauIIA5`'s runs at rtol <= 1e-10 beside `AdaptiveRadau` at the same error."""
    rows = []
    for problem in problems:
        mine = [r for r in records if r["problem"] == problem.name]
        for r in mine:
            if r["solver"] != "RadauIIA5" or r["rtol"] > 1e-10 or not r["success"]:
                continue
            adaptive = _time_at_error(mine, "AdaptiveRadau", r["error"])
            rows.append(
                [
                    problem.name,
                    f"{r['rtol']:.0e}",
                    f"{r['error']:.2e}",
                    r["time"] * 1e3,
                    adaptive * 1e3,
                    r["time"] / adaptive,
                ]
            )
    return markdown_table(
        [
            "problem",
            "rtol",
            "RadauIIA5 error",
            "RadauIIA5 (ms)",
            "AdaptiveRadau at that error (ms)",
            "speed-up",
        ],
        rows,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args()
    if args.quick:
        rtols, solvers, jax_repeats, scipy_repeats = QUICK_RTOLS, QUICK_SOLVERS, 3, 1
    else:
        rtols, solvers, jax_repeats, scipy_repeats = RTOLS, tuple(JAX_SOLVERS), 7, 1
    problems = [HIRES, VAN_DER_POL, ROBERTSON]

    records = []
    agreement = {}
    for problem in problems:
        reference = reference_solution(problem, REFERENCE_RTOL)
        agreement[problem.name] = reference_check(problem, reference)
        records += run_jax(problem, rtols, jax_repeats, solvers, reference)
        records += run_scipy(problem, rtols, scipy_repeats, reference)

    report(records, problems, agreement, jax_repeats, scipy_repeats, args.quick)


def report(records, problems, agreement, jax_repeats, scipy_repeats, quick: bool):
    suffix = "_quick" if quick else ""
    plot(records, problems, OUTPUT_DIR / f"orders{suffix}.png")
    levels = ", ".join(f"{name} {value:.1e}" for name, value in agreement.items())
    text = (
        f"{machine_description()}\n\n"
        "Adaptive steps, `PIDController(rtol, atol)` with atol = rtol x scale "
        f"(HIRES {HIRES.scale:g}, van der Pol {VAN_DER_POL.scale:g}, Robertson "
        f"{ROBERTSON.scale:g}), the same tolerances for SciPy. Error: largest "
        "componentwise relative error at t1 against SciPy `Radau` at rtol = "
        f"{REFERENCE_RTOL:g}; `RadauIIA13` at rtol 1e-14 differs from it by "
        f"{levels}: errors below that are not resolved. SciPy uses the analytic "
        "Jacobian and does not report rejected steps. Warm time: minimum of up to "
        f"{jax_repeats} (JAX) or {scipy_repeats} (SciPy) runs. `AdaptiveRadau`'s "
        "attempted steps per order come from a separate run.\n\n"
        f"{results_table(records)}\n\n"
        "`AdaptiveRadau` against the others at its error (log-log interpolation "
        "between their runs; – where their runs do not reach that error):\n\n"
        f"{matched_error_table(records, problems)}\n\n"
        "`RadauIIA5` at rtol <= 1e-10 against `AdaptiveRadau` at the same error:\n\n"
        f"{against_radau5_table(records, problems)}\n\n"
        f"![Work-precision across orders](orders{suffix}.png)\n"
    )
    write_output(f"orders{suffix}.md", text)
    print(text)


if __name__ == "__main__":
    main()
