"""Learning van der Pol with mu = 1000 (y1' = y2, y2' = mu (1 - y1^2) y2 - y1) by
Levenberg-Marquardt with automatic steps per gap and scaled residuals, on a ladder of
data designs, cheapest first.

    python benchmarks/vanderpol_learning.py [--quick]    # ~20 min on 2 cores

Model: a PolynomialLibrary of degree 3 (10 monomials per equation, starting at zero);
solver RadauIIA5 (SimplifiedNewton, rtol = atol = 1e-8, at most 50 iterations);
`steps_per_interval="auto"`; `scale` = each component's largest |y| in the data.
Designs:

- `page`: the study page's design, 300 equally spaced points on [0, 3000] from (2, 0);
  each of the three relaxation jumps (about 5e-3 long) falls inside one gap of 10.
- `uniform-1000`: 1000 equally spaced points on [0, 3000] (gaps of 3): the jumps still
  fall inside single gaps.
- `jumps-sampled`: the 300 points plus 160 around each jump (spacing down to 1e-4), so
  that every jump is observed.
- `transients`: six short trajectories (t in [0, 20], 61 points from 1e-5, spaced
  geometrically) from (y1, 0), y1 = +-1.5, +-2, +-2.5: on the slow branches but off
  the slow manifold, onto which y2 relaxes at the rate mu (y1^2 - 1); no jumps.
- `kicked`: these six and six more from (y1, 1), whose relaxation moves y1 too.

Each design is trained in a subprocess under a wall-clock limit, so that one that
does not finish (or hangs) still leaves a row.

    python benchmarks/vanderpol_learning.py --feasibility [--quick]

counts instead the windows of three designs whose solve fails for the true equations
(and for the mu terms scaled by 0.9, 0.5, 2) with 1 to 256 steps per gap: one failed
window makes the training loss infinite.
"""

import argparse
import dataclasses
import json
import subprocess
import sys
import time

import jax


jax.config.update("jax_enable_x64", True)

import diffrax_implicit_node as din
import equinox as eqx
import numpy as np
import optimistix as optx
from _problems import machine_description, markdown_table, write_output
from diffrax_implicit_node._verify import reference_solve
from diffrax_implicit_node._windows import solve_windows


VANDERPOL = din.EXAMPLES["vanderpol"]
# Where y1 crosses 0 in each jump from (2, 0) on [0, 3000], to 1e-4.
JUMP_TIMES = (807.0847, 1614.2853, 2421.4858)


@dataclasses.dataclass(frozen=True)
class Design:
    name: str
    description: str
    example: din.Example
    times: np.ndarray


def _around_jump(t_jump: float, points: int) -> np.ndarray:
    """Observation times that resolve a jump: uniform (1e-4) through its core,
    geometric on either side out to 1."""
    core = t_jump + np.linspace(-5e-3, 5e-3, points // 2 + 1)
    sides = np.geomspace(5e-3, 1.0, points // 4 + 1)[1:]
    return np.concatenate([t_jump - sides, core, t_jump + sides])


def designs(quick: bool) -> list[Design]:
    uniform = np.linspace(0.0, VANDERPOL.t1, 300)
    jump_points = 40 if quick else 160
    sampled = np.unique(
        np.concatenate([uniform, *(_around_jump(t, jump_points) for t in JUMP_TIMES)])
    )
    # On the slow branches (|y1| > 1), off the slow manifold: y2 relaxes onto it.
    starts = np.array([[1.5, 0.0], [2.0, 0.0], [2.5, 0.0]])
    starts = np.concatenate([starts, -starts])
    transients = dataclasses.replace(VANDERPOL, initial_conditions=starts, t1=20.0)
    # The same, and kicked by y2 = 1, which moves y1 by 1 / (mu (y1^2 - 1)).
    kicked = dataclasses.replace(
        transients, initial_conditions=np.concatenate([starts, starts + [0.0, 1.0]])
    )
    transient_times = np.concatenate(
        [[0.0], np.geomspace(1e-5, 20.0, 30 if quick else 60)]
    )
    return [
        Design("page", "300 points on [0, 3000]", VANDERPOL, uniform),
        Design(
            "uniform-1000",
            "1000 points on [0, 3000]",
            VANDERPOL,
            np.linspace(0.0, VANDERPOL.t1, 1000),
        ),
        Design(
            "jumps-sampled",
            f"300 points on [0, 3000] + {jump_points} around each jump",
            VANDERPOL,
            sampled,
        ),
        Design(
            "transients",
            f"6 starts off the slow manifold, {len(transient_times)} points on [0, 20]",
            transients,
            transient_times,
        ),
        Design(
            "kicked",
            f"the 6 starts and the 6 with y2 = 1, {len(transient_times)} points "
            "on [0, 20]",
            kicked,
            transient_times,
        ),
    ]


def first_jump(vector_field) -> str:
    """When the trajectory of `vector_field` from (2, 0) first crosses y1 = 0 (the
    true one at 807.08), to 0.1."""
    ts = np.linspace(0.0, 1000.0, 10001)
    ys, succeeded = reference_solve(
        vector_field,
        jax.numpy.asarray(ts[None]),
        jax.numpy.asarray([[2.0, 0.0]]),
        tol=1e-10,
    )
    if not bool(succeeded[0]):
        return "solve failed"
    negative = np.flatnonzero(np.asarray(ys[0, :, 0]) < 0)
    return f"{ts[negative[0]]:.1f}" if len(negative) else "none by 1000"


TRUE_TERMS = {"x0": ("x1",), "x1": ("x1", "x0**2*x1", "x0")}


def train(design: Design, epochs: int, progress: bool = False) -> dict:
    """Fits the design's data and summarises the result, as a JSON-ready dict."""
    ts, ys = design.example.data(design.times)
    scale = np.max(np.abs(ys), axis=(0, 1))
    start = time.perf_counter()
    result = din.fit(
        design.example.model(jax.random.key(0), "polynomial"),
        ts,
        ys,
        solver=din.solver_from_name("radau5"),
        optimiser=optx.LevenbergMarquardt(rtol=1e-10, atol=1e-12),
        epochs=epochs,
        steps_per_interval="auto",
        scale=scale,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    for equation in din.to_sympy(result.model.learned):
        print(f"{equation.evalf(5)}", flush=True)
    rows = design.example.compare(din.to_sympy(result.model.learned))
    errors = {
        equation: max(
            row.relative_error
            for row in rows
            if row.equation == equation and row.monomial in terms
        )
        for equation, terms in TRUE_TERMS.items()
    }
    spurious = max((row for row in rows if not row.true), key=lambda r: abs(r.learned))
    learned_y2 = {
        row.monomial: row.learned
        for row in rows
        if row.equation == "x1" and row.monomial in TRUE_TERMS["x1"]
    }
    steps = result.steps
    return {
        "windows": int(steps.size),
        "steps": f"{steps.min()}-{steps.max()}, {int(np.sum(steps > 1))} refined",
        "epochs": len(result.losses),
        "loss": float(result.losses[-1]) if len(result.losses) else float("nan"),
        "seconds": seconds,
        "error_y1": errors["x0"],
        "error_y2": errors["x1"],
        "learned_y2": learned_y2,
        "spurious": (
            f"{spurious.learned:.2g} {spurious.monomial} in {spurious.equation}'"
        ),
        "verified": result.verification.verified,
        "trajectory_error": result.verification.trajectory_error,
        "first_jump": first_jump(result.model),
        "stopped": result.message
        or ("converged" if len(result.losses) < epochs else "epoch limit"),
    }


def true_model(design: Design, mu_factor: float) -> din.NeuralVectorField:
    """The true equations as a PolynomialLibrary, with both mu terms scaled."""
    model = design.example.model(jax.random.key(0), "polynomial")
    exponents = [tuple(e) for e in model.learned.exponents]
    coefficients = np.zeros(model.learned.coefficients.shape)
    coefficients[0, exponents.index((0, 1))] = 1.0
    coefficients[1, exponents.index((0, 1))] = 1000.0 * mu_factor
    coefficients[1, exponents.index((2, 1))] = -1000.0 * mu_factor
    coefficients[1, exponents.index((1, 0))] = -1.0
    return eqx.tree_at(
        lambda m: m.learned.coefficients, model, jax.numpy.asarray(coefficients)
    )


def feasibility(quick: bool) -> None:
    """How many windows of the training discretisation fail (Newton does not
    converge) for the true equations, and for mu scaled, by steps per gap: a window
    that fails makes the whole loss infinite."""
    step_counts = [1, 16, 256] if quick else [1, 4, 16, 64, 256]
    by_name = {d.name: d for d in designs(quick)}
    rows = []
    for name in ("page", "jumps-sampled", "kicked"):
        design = by_name[name]
        ts, ys = design.example.data(design.times)
        t0 = np.tile(ts[:-1], len(ys))
        t1 = np.tile(ts[1:], len(ys))
        y0 = ys[:, :-1].reshape(-1, 2)
        for mu_factor in (1.0, 0.9, 0.5, 2.0):
            row = [name, len(t0), f"{mu_factor:g} mu"]
            for steps in step_counts:
                _, succeeded = solve_windows(
                    true_model(design, mu_factor),
                    jax.numpy.asarray(t0),
                    jax.numpy.asarray(t1),
                    jax.numpy.asarray(y0),
                    jax.numpy.full(t0.shape, steps),
                    solver=din.solver_from_name("radau5"),
                    max_steps=steps,
                    args=None,
                )
                failed = np.flatnonzero(~np.asarray(succeeded))
                where = ", ".join(f"{t:.0f}" for t in t0[failed][:3])
                row.append(f"{len(failed)} ({where})" if len(failed) else "0")
            print(" | ".join(str(x) for x in row), flush=True)
            rows.append(row)
    headers = ["design", "gaps", "equations"]
    headers += [f"{steps} steps per gap" for steps in step_counts]
    text = "\n".join(
        [
            "Windows whose RadauIIA5 solve fails (Newton does not converge in 50 "
            "iterations) for the true equations and for both mu terms scaled, by "
            "steps per gap; in brackets the start of the first (up to) three. One "
            "failed window makes the training loss infinite.",
            "",
            markdown_table(headers, rows),
            "",
            machine_description(),
        ]
    )
    name = "vanderpol_feasibility_quick.md" if quick else "vanderpol_feasibility.md"
    print(f"Written to {write_output(name, text)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--design", help="train only this design, print JSON")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--timeout", type=float, help="seconds per design")
    parser.add_argument("--progress", action="store_true", help="with --design")
    parser.add_argument(
        "--feasibility",
        action="store_true",
        help="only count the windows that fail for the true equations",
    )
    options = parser.parse_args()
    epochs = options.epochs or (20 if options.quick else 300)
    if options.feasibility:
        feasibility(options.quick)
        return
    all_designs = designs(options.quick)
    if options.design:
        (design,) = [d for d in all_designs if d.name == options.design]
        print(
            "RESULT " + json.dumps(train(design, epochs, options.progress)), flush=True
        )
        return
    timeout = options.timeout or (300 if options.quick else 600)
    rows = []
    for design in all_designs:
        command = [sys.argv[0], "--design", design.name, "--epochs", str(epochs)]
        if options.quick:
            command.append("--quick")
        start = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, *command],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            outcome = json.loads(lines[-1][7:]) if lines else None
            failure = "" if outcome else (done.stderr.strip().splitlines() or ["?"])[-1]
        except subprocess.TimeoutExpired:
            outcome, failure = None, f"did not finish in {timeout:.0f} s"
        if outcome is None:
            seconds = time.perf_counter() - start
            row = [design.name, design.description, len(design.times)]
            row += ["–"] * 5 + [f"{seconds:.0f} s"] + ["–"] * 4 + [failure]
        else:
            y2 = outcome["learned_y2"]
            row = [
                design.name,
                design.description,
                outcome["windows"],
                outcome["steps"],
                outcome["epochs"],
                f"{outcome['error_y1']:.2g}",
                f"{outcome['error_y2']:.2g}",
                ", ".join(f"{y2[m]:.4g}" for m in TRUE_TERMS["x1"]),
                f"{outcome['seconds']:.0f} s",
                outcome["spurious"],
                "yes" if outcome["verified"] else "**no**",
                f"{outcome['trajectory_error']:.1e}",
                outcome["first_jump"],
                outcome["stopped"],
            ]
        print(" | ".join(str(x) for x in row), flush=True)
        rows.append(row)
    headers = [
        "design",
        "data",
        "gaps",
        "steps per gap (min-max, refined gaps)",
        "epochs",
        "error y1'",
        "error y2'",
        "learned y2, y1^2 y2, y1 in y2' (true 1000, -1000, -1)",
        "time",
        "largest spurious term",
        "verified",
        "trajectory error",
        "first jump from (2, 0) (true 807.1)",
        "stopped",
    ]
    text = "\n".join(
        [
            "Van der Pol, mu = 1000: PolynomialLibrary of degree 3, "
            "Levenberg-Marquardt, RadauIIA5 with automatic steps per gap, residuals "
            "scaled by each component's largest |y|. Error: the largest "
            "|learned - true| / |true| of the true coefficients of that equation.",
            "",
            markdown_table(headers, rows),
            "",
            machine_description(),
        ]
    )
    name = "vanderpol_learning_quick.md" if options.quick else "vanderpol_learning.md"
    print(f"Written to {write_output(name, text)}")


if __name__ == "__main__":
    main()
