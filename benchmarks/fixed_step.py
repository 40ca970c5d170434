"""Work-precision with constant step sizes: error at the final time against the number
of steps (and against the warm run time) for the four collocation solvers of this
package and Diffrax's `ImplicitEuler` and `Kvaerno5`, on HIRES and van der Pol.

    python benchmarks/fixed_step.py            # full run, a few minutes
    python benchmarks/fixed_step.py --quick    # smoke run

Writes `docs/benchmarks/fixed_step.md` and `docs/benchmarks/fixed_step.png`.

Every solver gets the same Newton tolerances (`rtol = 1e-12`, `atol = 1e-12` times the
problem's scale, at most 20 iterations), tight enough that the Newton error stays
below the discretisation error. The step count is a traced argument, so each solver
compiles once per problem. A run whose Newton iteration fails is shown as failed
(with the step it failed at) rather than dropped.
"""

import argparse
import dataclasses

import jax


jax.config.update("jax_enable_x64", True)

import diffrax
import diffrax_implicit_node as din
import jax.numpy as jnp
import matplotlib
import numpy as np
import optimistix as optx
from _problems import (
    HIRES,
    loglog_slope,
    machine_description,
    markdown_table,
    median_time,
    OUTPUT_DIR,
    Problem,
    reference_solution,
    relative_error,
    timed,
    VAN_DER_POL,
    write_output,
)


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker


NEWTON_RTOL = 1e-12
NEWTON_MAX_STEPS = 20

# Van der Pol over [0, 3000] needs adaptive steps: its relaxation jumps take ~1/mu of
# time. With constant steps we solve the first slow branch, t in [0, 750] (the fold,
# and the first jump, come at t ~ 807), initial layer of width ~1/(3 mu) included.
VAN_DER_POL_SHORT = dataclasses.replace(
    VAN_DER_POL, name="van der Pol (mu=1000), t in [0, 750]", t1=750.0
)

# Steps per run. HIRES: with fewer than ~3000 constant steps no solver gets through
# its initial transient (Newton diverges).
STEPS = {
    HIRES.name: (1600, 3200, 6400, 12800, 25600, 51200),
    VAN_DER_POL_SHORT.name: (16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
}
QUICK_STEPS = {
    HIRES.name: (3200, 12800),
    VAN_DER_POL_SHORT.name: (64, 256, 1024),
}


def make_solvers(problem: Problem) -> dict[str, diffrax.AbstractSolver]:
    rtol, atol = NEWTON_RTOL, NEWTON_RTOL * problem.scale
    ours = din.SimplifiedNewton(rtol=rtol, atol=atol)
    theirs = diffrax.VeryChord(rtol=rtol, atol=atol, norm=optx.max_norm)
    return {
        "BackwardEuler": din.BackwardEuler(
            root_finder=ours, root_find_max_steps=NEWTON_MAX_STEPS
        ),
        "Trapezoid": din.Trapezoid(
            root_finder=ours, root_find_max_steps=NEWTON_MAX_STEPS
        ),
        "RadauIIA3": din.RadauIIA3(
            root_finder=ours, root_find_max_steps=NEWTON_MAX_STEPS
        ),
        "RadauIIA5": din.RadauIIA5(
            root_finder=ours, root_find_max_steps=NEWTON_MAX_STEPS
        ),
        "diffrax.ImplicitEuler": diffrax.ImplicitEuler(
            root_finder=theirs, root_find_max_steps=NEWTON_MAX_STEPS
        ),
        "diffrax.Kvaerno5": diffrax.Kvaerno5(
            root_finder=theirs, root_find_max_steps=NEWTON_MAX_STEPS
        ),
        # Not asked for: shows Kvaerno5's accuracy where VeryChord reports failure.
        "diffrax.Kvaerno5 + optx.Newton": diffrax.Kvaerno5(
            root_finder=optx.Newton(rtol=rtol, atol=atol, norm=optx.max_norm),
            root_find_max_steps=NEWTON_MAX_STEPS,
        ),
    }


# Expected orders, for the table.
ORDERS = {
    "BackwardEuler": 1,
    "Trapezoid": 2,
    "RadauIIA3": 3,
    "RadauIIA5": 5,
    "diffrax.ImplicitEuler": 1,
    "diffrax.Kvaerno5": 5,
    "diffrax.Kvaerno5 + optx.Newton": 5,
}


def make_solve(problem: Problem, solver: diffrax.AbstractSolver):
    @jax.jit
    def solve(dt):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(problem.vector_field),
            solver,
            problem.t0,
            problem.t1,
            dt,
            jnp.asarray(problem.y0),
            stepsize_controller=diffrax.ConstantStepSize(),
            max_steps=None,
            throw=False,
        )
        return sol.ys[-1], sol.result == diffrax.RESULTS.successful, sol.stats

    return solve


def run_problem(problem: Problem, steps: tuple[int, ...], repeats: int) -> list[dict]:
    reference = reference_solution(problem)
    records = []
    for name, solver in make_solvers(problem).items():
        solve = make_solve(problem, solver)
        dt = lambda n: jnp.asarray((problem.t1 - problem.t0) / n)
        _, compile_time = timed(lambda: solve(dt(steps[0])))
        for n in steps:
            y1, success, stats = solve(dt(n))
            success = bool(success)
            # Round-off in t0 + k dt may add one tiny last step: report what ran.
            taken = int(stats["num_steps"])
            wall = median_time(lambda: solve(dt(n)), repeats) if success else np.nan
            records.append(
                dict(
                    problem=problem.name,
                    solver=name,
                    steps=n,
                    taken=taken,
                    success=success,
                    error=relative_error(y1, reference) if success else np.nan,
                    time=wall,
                    compile=compile_time,
                )
            )
    return records


def estimated_order(records: list[dict]) -> float:
    """Slope over the last (up to) four successful runs whose error is above the
    reference's own accuracy."""
    usable = [r for r in records if r["success"] and r["error"] > 1e-11]
    usable = usable[-4:]
    if len(usable) < 2:
        return np.nan
    return -loglog_slope([r["steps"] for r in usable], [r["error"] for r in usable])


def tables(records: list[dict], problems: list[Problem]) -> str:
    out = []
    for problem in problems:
        mine = [r for r in records if r["problem"] == problem.name]
        solvers = list(dict.fromkeys(r["solver"] for r in mine))
        steps = list(dict.fromkeys(r["steps"] for r in mine))
        rows = []
        for solver in solvers:
            by_steps = {r["steps"]: r for r in mine if r["solver"] == solver}
            cells = []
            for n in steps:
                r = by_steps[n]
                cells.append(
                    f"{r['error']:.2e}" if r["success"] else f"fail@{r['taken']}"
                )
            runs = list(by_steps.values())
            rows.append([solver, ORDERS[solver], estimated_order(runs), *cells])
        out.append(
            f"**{problem.name}**: relative error at t = {problem.t1:g} "
            "against the number of steps (`fail@k`: Newton failed at step k)\n\n"
            + markdown_table(["solver", "order", "est. order", *map(str, steps)], rows)
        )
        time_rows = []
        for solver in solvers:
            runs = [r for r in mine if r["solver"] == solver]
            time_rows.append(
                [solver, runs[0]["compile"]]
                + [r["time"] * 1e3 if r["success"] else np.nan for r in runs]
            )
        out.append(
            f"**{problem.name}**: compile time (s) and warm run time (ms, median) "
            "against the number of steps\n\n"
            + markdown_table(["solver", "compile (s)", *map(str, steps)], time_rows)
        )
    return "\n\n".join(out)


def plot(records: list[dict], problems: list[Problem], path):
    fig, axes = plt.subplots(len(problems), 2, figsize=(11, 4.2 * len(problems)))
    axes = np.atleast_2d(axes)
    for row, problem in zip(axes, problems):
        mine = [r for r in records if r["problem"] == problem.name and r["success"]]
        for solver in dict.fromkeys(r["solver"] for r in mine):
            runs = [r for r in mine if r["solver"] == solver]
            style = "--" if solver.startswith("diffrax") else "-"
            errors = [r["error"] for r in runs]
            row[0].loglog(
                [r["steps"] for r in runs], errors, style, marker="o", label=solver
            )
            row[1].loglog(
                [r["time"] for r in runs], errors, style, marker="o", label=solver
            )
        row[0].set(xlabel="steps", ylabel="relative error at t1", title=problem.name)
        row[1].set(xlabel="warm wall time (s)", ylabel="relative error at t1")
        for ax in row:
            ax.grid(True, which="major", alpha=0.3)
            # Minor tick labels of a short log axis overlap.
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, < 1 min")
    args = parser.parse_args()
    steps = QUICK_STEPS if args.quick else STEPS
    repeats = 1 if args.quick else 3
    problems = [HIRES, VAN_DER_POL_SHORT]

    records = []
    for problem in problems:
        records += run_problem(problem, steps[problem.name], repeats)

    suffix = "_quick" if args.quick else ""
    plot_path = OUTPUT_DIR / f"fixed_step{suffix}.png"
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    plot(records, problems, plot_path)
    text = (
        f"{machine_description()}\n\n"
        f"Constant step sizes; Newton rtol = {NEWTON_RTOL:g}, atol = rtol x scale "
        f"(HIRES {HIRES.scale:g}, van der Pol {VAN_DER_POL.scale:g}), at most "
        f"{NEWTON_MAX_STEPS} iterations; reference SciPy `Radau` at rtol = 1e-13 with "
        "analytic Jacobian. `est. order`: least-squares slope over the last four "
        "successful runs with error > 1e-11. Warm times are the median of "
        f"{repeats} runs.\n\n"
        f"{tables(records, problems)}\n\n"
        f"![Work-precision, constant steps](fixed_step{suffix}.png)\n"
    )
    write_output(f"fixed_step{suffix}.md", text)
    print(text)


if __name__ == "__main__":
    main()
