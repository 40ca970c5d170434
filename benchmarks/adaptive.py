"""Work-precision with adaptive steps: HIRES, van der Pol (mu = 1000) and a neural
vector field (a fixed random MLP with 32 states) at rtol from 1e-4 to 1e-10, for
`RadauIIA5` (with and without Jacobian reuse, with `PIDController` and with this
package's `PredictiveController`) and `RadauIIA3` against Diffrax's `Kvaerno5` (same
`PIDController`) and SciPy's `Radau` and `BDF`.

    python benchmarks/adaptive.py            # full run, several minutes
    python benchmarks/adaptive.py --quick    # smoke run

Writes `docs/benchmarks/adaptive.md` and `docs/benchmarks/adaptive.png`.

- Tolerances: atol = rtol x scale, with scale 1e-3 for HIRES (its components are
  1e-5 to 1e-2) and the neural problem, 1 for van der Pol. The same numbers go to
  Diffrax's `PIDController` (defaults otherwise: an I-controller, `dt0=None`) and to
  SciPy. The Newton tolerances of the JAX solvers come from the controller (their
  defaults).
- SciPy gets a plain NumPy right-hand side and its analytic Jacobian (`jac=`).
- Counts. Steps: Diffrax's stats; SciPy reports accepted steps only. For the JAX
  solvers, f evaluations, Jacobians and LU factorisations are counted in a separate,
  untimed run: the vector field calls `jax.debug.callback` on each (primal)
  evaluation, its JVP rule on each Jacobian (forward-mode Jacobians are counted as
  Jacobians, not as n evaluations), and `lineax.LU`'s factorisation on each run. For
  SciPy, `nfev`, `njev` and `nlu`.
- Times: compile time is `jit(...).lower(...).compile()`, as wall time and as the
  process's CPU time (all threads); warm time is the median of
  several runs of the compiled solve, waited for with `jax.block_until_ready`. The
  tolerance is a traced argument, so each solver compiles once per problem.
"""

import argparse
import contextlib
import functools
import time

import jax


jax.config.update("jax_enable_x64", True)

import diffrax
import diffrax_implicit_node as din
import diffrax_implicit_node._solver.collocation as collocation
import jax.numpy as jnp
import lineax as lx
import matplotlib
import numpy as np
from _problems import (
    HIRES,
    machine_description,
    markdown_table,
    median_time,
    NEURAL,
    OUTPUT_DIR,
    Problem,
    REFERENCE_RTOL,
    reference_solution,
    relative_error,
    scipy_solve,
    VAN_DER_POL,
    write_output,
)


matplotlib.use("Agg")
import matplotlib.pyplot as plt


RTOLS = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
QUICK_RTOLS = (1e-5, 1e-8)
# The smoke run skips RadauIIA3 and uses a cheaper reference.
QUICK_SOLVERS = ("RadauIIA5", "RadauIIA5 (predictive)", "diffrax.Kvaerno5")
QUICK_REFERENCE_RTOL = 1e-11
MAX_STEPS = 200_000

# name: (solver, step-size controller)
JAX_SOLVERS = {
    "RadauIIA5": (din.RadauIIA5, diffrax.PIDController),
    "RadauIIA5 (predictive)": (din.RadauIIA5, din.PredictiveController),
    "RadauIIA5 (no reuse)": (
        functools.partial(din.RadauIIA5, reuse_jacobian=False),
        diffrax.PIDController,
    ),
    "RadauIIA3": (din.RadauIIA3, diffrax.PIDController),
    "diffrax.Kvaerno5": (diffrax.Kvaerno5, diffrax.PIDController),
}
# The rows of the matched-error table.
OUR_SOLVERS = ("RadauIIA5", "RadauIIA5 (predictive)")
SCIPY_METHODS = ("Radau", "BDF")


def make_solve(
    problem: Problem,
    solver: diffrax.AbstractSolver,
    controller_cls,
    vector_field,
    max_steps: int = MAX_STEPS,
):
    def solve(rtol):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            solver,
            problem.t0,
            problem.t1,
            None,
            jnp.asarray(problem.y0),
            stepsize_controller=controller_cls(rtol=rtol, atol=rtol * problem.scale),
            max_steps=max_steps,
            throw=False,
        )
        return (
            sol.ys[-1],
            sol.result == diffrax.RESULTS.successful,
            sol.stats["num_accepted_steps"],
            sol.stats["num_rejected_steps"],
        )

    return solve


def counting_vector_field(problem: Problem, counts: dict[str, int]):
    """`problem.vector_field`, counting on the host its (primal) evaluations and the
    Jacobians taken of it: a Jacobian is one (vmapped) forward-mode derivative, so
    one call of the JVP rule, whose evaluations are not counted as evaluations."""

    def bump(key, *_):
        counts[key] += 1

    @jax.custom_jvp
    def vector_field(t, y, args):
        # Passing `y` makes `vmap` call back once per batch element (e.g. per stage).
        jax.debug.callback(functools.partial(bump, "fevals"), y)
        return problem.vector_field(t, y, args)

    @vector_field.defjvp
    def vector_field_jvp(primals, tangents):
        t, y, args = primals
        jax.debug.callback(functools.partial(bump, "jacobians"))
        return jax.jvp(lambda y: problem.vector_field(t, y, args), (y,), (tangents[1],))

    return vector_field


@contextlib.contextmanager
def counting_lu_factorisations(counts: dict[str, int]):
    """Makes every LU factorisation traced inside count itself when it runs: Lineax's
    (Diffrax's solvers) and the package's own (`_factorise`, which calls LAPACK
    directly; see docs/further_details/xla_cpu_hang.md)."""
    original_init = lx.LU.init
    original_factorise = collocation._factorise

    def count():
        jax.debug.callback(lambda: counts.update(lus=counts["lus"] + 1))

    def init(self, operator, options):
        count()
        return original_init(self, operator, options)

    def factorise(matrix):
        count()
        return original_factorise(matrix)

    lx.LU.init = init
    collocation._factorise = factorise
    try:
        yield
    finally:
        lx.LU.init = original_init
        collocation._factorise = original_factorise


def run_jax(
    problem: Problem, rtols, repeats: int, solvers, reference_rtol: float
) -> list[dict]:
    reference = reference_solution(problem, reference_rtol)
    records = []
    for name in solvers:
        solver_cls, controller_cls = JAX_SOLVERS[name]
        solver = solver_cls()
        example_rtol = jnp.asarray(rtols[0])
        start, start_cpu = time.perf_counter(), time.process_time()
        solve = (
            jax.jit(make_solve(problem, solver, controller_cls, problem.vector_field))
            .lower(example_rtol)
            .compile()
        )
        compile_time = time.perf_counter() - start
        compile_cpu = time.process_time() - start_cpu

        counts = dict(fevals=0, jacobians=0, lus=0)
        with counting_lu_factorisations(counts):
            counting_solve = (
                jax.jit(
                    make_solve(
                        problem,
                        solver,
                        controller_cls,
                        counting_vector_field(problem, counts),
                    )
                )
                .lower(example_rtol)
                .compile()
            )
        for rtol in rtols:
            rtol_array = jnp.asarray(rtol)
            y1, success, accepted, rejected = solve(rtol_array)
            counts.update(fevals=0, jacobians=0, lus=0)
            jax.block_until_ready(counting_solve(rtol_array))
            jax.effects_barrier()
            records.append(
                dict(
                    problem=problem.name,
                    rtol=rtol,
                    solver=name,
                    success=bool(success),
                    error=relative_error(y1, reference, problem.error_floor),
                    accepted=int(accepted),
                    rejected=int(rejected),
                    fevals=counts["fevals"],
                    jacobians=counts["jacobians"],
                    lus=counts["lus"],
                    compile=compile_time,
                    compile_cpu=compile_cpu,
                    time=median_time(lambda: solve(rtol_array), repeats),
                )
            )
    return records


def run_scipy(
    problem: Problem, rtols, repeats: int, reference_rtol: float
) -> list[dict]:
    reference = reference_solution(problem, reference_rtol)
    records = []
    for method in SCIPY_METHODS:
        for rtol in rtols:
            solve = functools.partial(scipy_solve, problem, rtol, method)

            sol = solve()
            records.append(
                dict(
                    problem=problem.name,
                    rtol=rtol,
                    solver=f"scipy {method}",
                    success=bool(sol.success),
                    error=relative_error(sol.y[:, -1], reference, problem.error_floor),
                    accepted=len(sol.t) - 1,
                    rejected=np.nan,
                    fevals=sol.nfev,
                    jacobians=sol.njev,
                    lus=sol.nlu,
                    compile=np.nan,
                    compile_cpu=np.nan,
                    time=median_time(solve, repeats),
                )
            )
    return records


def interpolate_at_error(runs: list[dict], key: str, error: float) -> float:
    """`key` (time or steps) of a solver at a given error, interpolated log-log
    between its runs; NaN outside the range of errors it reached."""
    runs = [r for r in runs if r["success"] and np.isfinite(r["error"])]
    if len(runs) < 2:
        return np.nan
    log_errors = np.log([r["error"] for r in runs])
    log_values = np.log([r[key] for r in runs])
    order = np.argsort(log_errors)
    log_errors, log_values = log_errors[order], log_values[order]
    if not log_errors[0] <= np.log(error) <= log_errors[-1]:
        return np.nan
    return float(np.exp(np.interp(np.log(error), log_errors, log_values)))


def matched_error_table(records: list[dict], problems: list[Problem]) -> str:
    rows = []
    for problem in problems:
        mine = [r for r in records if r["problem"] == problem.name]
        for r in mine:
            r["steps"] = r["accepted"]
        ours = [r for r in mine if r["solver"] in OUR_SOLVERS and r["success"]]
        kvaerno = [r for r in mine if r["solver"] == "diffrax.Kvaerno5"]
        radau = [r for r in mine if r["solver"] == "scipy Radau"]
        for r in ours:
            kvaerno_time = interpolate_at_error(kvaerno, "time", r["error"])
            radau_steps = interpolate_at_error(radau, "steps", r["error"])
            rows.append(
                [
                    problem.name,
                    r["solver"],
                    f"{r['rtol']:.0e}",
                    f"{r['error']:.2e}",
                    r["time"] * 1e3,
                    kvaerno_time * 1e3,
                    r["time"] / kvaerno_time,
                    r["accepted"],
                    radau_steps,
                ]
            )
    return markdown_table(
        [
            "problem",
            "solver",
            "rtol",
            "error",
            "warm (ms)",
            "Kvaerno5 warm at same error (ms)",
            "time ratio",
            "accepted steps",
            "scipy Radau accepted steps at same error",
        ],
        rows,
    )


def results_table(records: list[dict]) -> str:
    rows = []
    for r in records:
        rows.append(
            [
                r["problem"],
                f"{r['rtol']:.0e}",
                r["solver"],
                f"{r['error']:.2e}" if r["success"] else f"failed ({r['error']:.1e})",
                r["accepted"],
                "–" if np.isnan(r["rejected"]) else r["rejected"],
                r["fevals"],
                r["jacobians"],
                r["lus"],
                r["compile"],
                r["compile_cpu"],
                r["time"] * 1e3,
            ]
        )
    return markdown_table(
        [
            "problem",
            "rtol",
            "solver",
            "rel. error",
            "accepted",
            "rejected",
            "f evals",
            "Jacobians",
            "LUs",
            "compile wall (s)",
            "compile CPU (s)",
            "warm (ms)",
        ],
        rows,
    )


def plot(records: list[dict], problems: list[Problem], path):
    fig, axes = plt.subplots(2, len(problems), figsize=(5.5 * len(problems), 8.4))
    axes = np.asarray(axes).reshape(2, len(problems))
    for column, problem in zip(axes.T, problems):
        mine = [r for r in records if r["problem"] == problem.name and r["success"]]
        for solver in dict.fromkeys(r["solver"] for r in mine):
            runs = [r for r in mine if r["solver"] == solver]
            # Solid for this package's solvers, dashed for Kvaerno5 and SciPy.
            style = "-" if "Radau" in solver and "scipy" not in solver else "--"
            errors = [r["error"] for r in runs]
            column[0].loglog(
                [r["time"] for r in runs], errors, style, marker="o", label=solver
            )
            column[1].loglog(
                [r["accepted"] for r in runs], errors, style, marker="o", label=solver
            )
        column[0].set(
            xlabel="warm wall time (s)",
            ylabel="relative error at t1",
            title=problem.name,
        )
        column[1].set(xlabel="accepted steps", ylabel="relative error at t1")
        for ax in column:
            ax.grid(True, which="major", alpha=0.3)
        column[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, < 1 min")
    args = parser.parse_args()
    if args.quick:
        rtols, solvers, reference_rtol = (
            QUICK_RTOLS,
            QUICK_SOLVERS,
            QUICK_REFERENCE_RTOL,
        )
        jax_repeats, scipy_repeats = 1, 1
    else:
        rtols, solvers, reference_rtol = RTOLS, tuple(JAX_SOLVERS), REFERENCE_RTOL
        jax_repeats, scipy_repeats = 5, 3
    problems = [HIRES, VAN_DER_POL, NEURAL]

    records = []
    for problem in problems:
        records += run_jax(problem, rtols, jax_repeats, solvers, reference_rtol)
        records += run_scipy(problem, rtols, scipy_repeats, reference_rtol)
    records.sort(key=lambda r: (r["problem"] != HIRES.name, -r["rtol"]))

    suffix = "_quick" if args.quick else ""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    plot(records, problems, OUTPUT_DIR / f"adaptive{suffix}.png")
    text = (
        f"{machine_description()}\n\n"
        "Adaptive steps, `PIDController(rtol, atol)` (or, for `RadauIIA5 "
        "(predictive)`, this package's `PredictiveController(rtol, atol)`, which "
        "keeps h for proposed factors in [1, 1.2] so that the factorised Newton "
        "matrix is reused) with atol = rtol x scale "
        f"(HIRES {HIRES.scale:g}, van der Pol {VAN_DER_POL.scale:g}), the same "
        "tolerances for SciPy. Error: largest componentwise relative error at t1 "
        f"against SciPy `Radau` at rtol = {reference_rtol:g}. SciPy uses the "
        "analytic Jacobian and does not report rejected steps. JAX f evaluations "
        "and their Jacobians and LU factorisations are counted in a separate run "
        "(`RadauIIA5` keeps a Jacobian while Newton converges fast with it, and its "
        "LU factorisations while h is also unchanged; "
        "`RadauIIA5 (no reuse)` takes one per attempted step). The neural problem's "
        f"error is relative to max(|y|, {NEURAL.error_floor:g}). Warm time: median of "
        f"{jax_repeats} (JAX) or {scipy_repeats} (SciPy) runs. Compile: "
        "`jit(...).lower(...).compile()` of the solve, wall and process CPU time.\n\n"
        f"{results_table(records)}\n\n"
        "At matched error (log-log interpolation between the other solver's runs; "
        "– where its runs do not reach that error):\n\n"
        f"{matched_error_table(records, problems)}\n\n"
        f"![Work-precision, adaptive steps](adaptive{suffix}.png)\n"
    )
    write_output(f"adaptive{suffix}.md", text)
    print(text)


if __name__ == "__main__":
    main()
