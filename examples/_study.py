"""Shared by the example scripts: train one configuration, run a study over numbers of
observations and solvers, and write its tables (Markdown) and plots (PNG) into
`docs/examples/`."""

import argparse
import dataclasses
import pathlib
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import diffrax_implicit_node as din
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from diffrax_implicit_node._runs import train_by_name


OUTPUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "docs" / "examples"
IMPLICIT_SOLVERS = ("backward-euler", "trapezoid", "radau3", "radau5")
ORDERS = {"backward-euler": 1, "trapezoid": 2, "radau3": 3, "radau5": 5}


@dataclasses.dataclass
class Run:
    solver: str
    points: int
    learned: list
    errors: dict  # "x0': x1*x2" -> fractional relative error, true coefficients only
    epochs: int
    final_loss: float
    stopped_early: bool
    seconds: float
    verified: bool
    max_steps: int

    @property
    def max_error(self) -> float:
        return max(self.errors.values())


def parse_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a fast smoke run (written as *_quick)"
    )
    return parser.parse_args()


def train(
    name: str, solver: str, points: int, epochs: int, steps, seed: int = 0
) -> Run:
    example = din.EXAMPLES[name]
    ts, ys = example.data(points)
    run = train_by_name(
        example.model(jr.key(seed)),
        ts,
        ys,
        solver=solver,
        optimiser=example.optimiser,
        epochs=epochs,
        steps=steps,
        progress=False,
    )
    result = run.result
    learned = din.to_sympy(result.model.learned)
    errors = {
        f"{row.equation}': {row.monomial}": row.relative_error
        for row in example.compare(learned)
        if row.relative_error is not None
    }
    study_run = Run(
        solver=solver,
        points=points,
        learned=learned,
        errors=errors,
        epochs=len(result.losses),
        final_loss=run.final_loss,
        stopped_early=result.stopped_early,
        seconds=run.seconds,
        verified=result.verification.verified,
        max_steps=int(result.steps.max()),
    )
    print(
        f"{name} {solver:>14} N={points:>5}: max error {study_run.max_error:.3e}, "
        f"loss {study_run.final_loss:.3e}, {study_run.epochs} epochs"
        + (" (stopped early)" if study_run.stopped_early else "")
        + f", {run.steps_summary()}, "
        + ("verified" if study_run.verified else "NOT verified")
        + f", {run.seconds:.1f} s",
        flush=True,
    )
    return study_run


def machine() -> str:
    return f"{platform.machine()} CPU, {platform.system()}, JAX {jax.__version__}"


def equations_section(name: str, runs: list[Run]) -> str:
    example = din.EXAMPLES[name]
    lines = []
    for solver in dict.fromkeys(run.solver for run in runs):
        columns = {"true": example.true_equations()}
        for run in runs:
            if run.solver == solver:
                columns[f"N = {run.points}"] = din.prune(run.learned, 1e-8)
        lines += [
            f"**{solver}**",
            "",
            din.equations_table(columns, digits=6, format="markdown"),
            "",
        ]
    return "\n".join(lines)


def errors_table(runs: list[Run]) -> str:
    keys = list(runs[0].errors)
    lines = [
        "| solver | N | "
        + " | ".join(f"`{k}`" for k in keys)
        + " | loss | epochs | time |",
        "|---" * (len(keys) + 5) + "|",
    ]
    for run in runs:
        cells = [f"{run.errors[k]:.2e}" for k in keys]
        stopped = " (stopped)" if run.stopped_early else ""
        lines.append(
            f"| {run.solver} | {run.points} | "
            + " | ".join(cells)
            + f" | {run.final_loss:.2e} | {run.epochs}{stopped} | {run.seconds:.0f} s |"
        )
    return "\n".join(lines)


def error_plot(name: str, runs: list[Run], path: pathlib.Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for solver in dict.fromkeys(run.solver for run in runs):
        mine = sorted((r for r in runs if r.solver == solver), key=lambda r: r.points)
        points = np.array([r.points for r in mine])
        errors = np.array([r.max_error for r in mine])
        (line,) = axes.loglog(points, errors, "o-", label=solver)
        if solver in ORDERS and len(points) > 1:
            # The slope that the order of the method predicts, through the last point.
            reference = errors[-1] * (points / points[-1]) ** -ORDERS[solver]
            axes.loglog(points, reference, ":", color=line.get_color(), linewidth=1)
    axes.set_xlabel("number of observations N")
    axes.set_ylabel("largest fractional relative error of a coefficient")
    axes.set_title(f"{name}: coefficient error (dotted: slope -order)")
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def study(
    name: str,
    points: tuple[int, ...],
    solvers: tuple[str, ...] = IMPLICIT_SOLVERS,
    *,
    quick: bool,
    steps: int | None = None,
) -> None:
    """Trains with every solver on every number of observations (with `steps` solver
    steps per gap, by default the example's); with several numbers of observations,
    also plots the coefficient error against them."""
    example = din.EXAMPLES[name]
    steps = example.steps_per_interval if steps is None else steps
    if quick:
        solvers = tuple(dict.fromkeys(solvers[:1] + solvers[-1:]))
        points = tuple(dict.fromkeys(max(n // 20, 8) for n in points[:2]))
    epochs = 10 if quick else example.epochs
    start = time.perf_counter()
    runs = [train(name, s, n, epochs, steps=steps) for s in solvers for n in points]
    total = time.perf_counter() - start
    suffix = "_quick" if quick else ""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    if len(points) > 1:
        error_plot(name, runs, OUTPUT_DIR / f"{name}{suffix}.png")
    model = (
        f"PiNet of degree {example.degree} and width {example.width}"
        if example.model_type == "pinet"
        else f"polynomial library of degree {example.degree}"
    )
    text = "\n".join(
        [
            f"Study `{name}`{' (quick smoke run)' if quick else ''}: "
            f"{example.description}; "
            f"{len(example.initial_conditions)} trajectory(ies); "
            f"{model}; "
            f"at most {epochs} steps of {example.optimiser} "
            f"(`din.optimiser_from_name({example.optimiser!r})`); "
            f"{steps} solver step(s) per gap. "
            f"Total time {total:.0f} s on {machine()}.",
            "",
            "Fractional relative error |learned - true| / |true| of each true "
            "coefficient:",
            "",
            errors_table(runs),
            "",
            "Learned equations (coefficients below 1e-8 pruned):",
            "",
            equations_section(name, runs),
        ]
    )
    (OUTPUT_DIR / f"{name}{suffix}.md").write_text(text)
    print(f"wrote {OUTPUT_DIR / f'{name}{suffix}.md'} ({total:.0f} s)")
