"""Automatic discretisation (`steps_per_interval="auto"`) against fixed steps per gap:
the steps chosen, the coefficient errors, whether the fit is verified, and the time.

    python benchmarks/auto_steps.py [--quick]

First the reproduction studies `linear` (L-BFGS), `nonlinear2d` and `nonlinear3d`
(Levenberg-Marquardt) as `python -m diffrax_implicit_node reproduce` runs them (369
points, seed 0), with `auto` against each study's default fixed steps (1, 16, 8).
Then, with Levenberg-Marquardt and 1, 4 or 16 fixed steps, problems whose
transients span one or two gaps: the issue's two-species system
x0' = -41 x0 + 40 x1^2, x1' = x0 - x1 - x1^2 (3 trajectories x 60 points on [0, 3]:
h * 41 = 2.1), and `nonlinear2d` (Kaps, rate 1000) and `nonlinear3d` with 24 points.
RadauIIA5, PiNet of each example's degree and width, at most 300 epochs. Each
row's time includes compilation; later rows of a problem may reuse what earlier
ones compiled (`auto` runs first). The full run takes about 45 minutes on 2 shared
cores; `--quick` fits only the two-species system, with `auto` and one step, in a
few minutes."""

import argparse
from typing import Literal, NamedTuple

import jax


jax.config.update("jax_enable_x64", True)

import diffrax_implicit_node as din
import jax.random as jr
import numpy as np
from _problems import machine_description, markdown_table, write_output
from diffrax_implicit_node._runs import train_by_name


def two_species(y):
    x0, x1 = y
    return [-41.0 * x0 + 40.0 * x1**2, x0 - x1 - x1**2]


TWO_SPECIES = din.Example(
    name="two-species",
    description="x0' = -41 x0 + 40 x1^2, x1' = x0 - x1 - x1^2",
    polynomial=two_species,
    known=None,
    initial_conditions=np.array([[0.0, 1.0], [2.0, 0.5], [0.5, 1.5]]),
    t1=3.0,
    degree=2,
    width=6,
    epochs=300,
    optimiser="levenberg-marquardt",
)


class Case(NamedTuple):
    """One fit: a problem, its data and optimiser, and a steps setting."""

    example: din.Example
    points: int
    optimiser: str
    steps: int | Literal["auto"]

    @property
    def problem(self) -> str:
        return f"{self.example.name} (N={self.points}, {self.optimiser})"


def coefficient_errors(
    example: din.Example, result: din.FitResult
) -> tuple[float, float]:
    """The largest |learned - true| / |true| of a true coefficient, and the largest
    |learned| of a monomial absent from the truth (0 if none)."""
    comparison = example.compare(din.to_sympy(result.model.learned))
    relative = [r.relative_error for r in comparison if r.relative_error is not None]
    spurious = [abs(r.learned) for r in comparison if r.relative_error is None]
    return max(relative), max(spurious, default=0.0)


def verdict(result: din.FitResult) -> str:
    """Verified or not, flagging coefficients the data do not determine and a fit
    that stopped early."""
    words = "yes" if result.verification.verified else "**no**"
    poorly = result.uncertainty.poorly_determined()
    if poorly:
        words += f"; poorly determined: {len(poorly)} coefficients"
    if result.stopped_early:
        words += f"; stopped early: {result.message}"
    return words


def cases(quick: bool) -> list[Case]:
    """In the order they run: the reproduction studies' own configurations first
    (`auto` against each study's fixed steps), then the comparison with 1, 4 and
    16 fixed steps on small data sets. Quick: the two-species system with `auto` and
    one step. (Fewer epochs would not do: `auto` first checks the discretisation
    when the optimiser converges or after 50 epochs.)"""
    if quick:
        return [Case(TWO_SPECIES, 60, "levenberg-marquardt", s) for s in ("auto", 1)]
    # Each study's fixed steps: the paper's one per gap for `linear` (whose example
    # now defaults to `auto`), the example's own count for the others.
    fixed_steps = dict(linear=1, nonlinear2d=16, nonlinear3d=8)
    studies = [
        Case(example, example.points, example.optimiser, steps)
        for name, fixed in fixed_steps.items()
        for example in [din.EXAMPLES[name]]
        for steps in ("auto", fixed)
    ]
    small = [
        (TWO_SPECIES, 60),
        *((din.EXAMPLES[n], 24) for n in ("nonlinear2d", "nonlinear3d")),
    ]
    return studies + [
        Case(example, points, "levenberg-marquardt", steps)
        for example, points in small
        for steps in ("auto", 1, 4, 16)
    ]


HEADERS = [
    "problem",
    "steps setting",
    "steps chosen",
    "max coefficient relative error",
    "largest spurious coefficient",
    "verified",
    "trajectory error",
    "discretisation bias",
    "epochs",
    "time (s)",
]


def run_case(case: Case) -> list[str]:
    ts, ys = case.example.data(case.points)
    run = train_by_name(
        case.example.model(jr.key(0)),
        ts,
        ys,
        solver="radau5",
        optimiser=case.optimiser,
        epochs=case.example.epochs,
        steps=case.steps,
        progress=False,
    )
    result = run.result
    relative, spurious = coefficient_errors(case.example, result)
    return [
        case.problem,
        str(case.steps),
        run.steps_summary(),
        f"{relative:.2e}",
        f"{spurious:.1e}",
        verdict(result),
        f"{result.verification.trajectory_error:.1e}",
        f"{result.verification.discretisation_bias:.1e}",
        f"{len(result.losses)}",
        f"{run.seconds:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    todo = cases(quick)
    rows = []
    for case in todo:
        rows.append(run_case(case))
        print(" | ".join(rows[-1]), flush=True)
        # Written after every fit, so that an interrupted run keeps what it measured.
        done = "" if len(rows) == len(todo) else f" ({len(rows)} of {len(todo)} fits)"
        text = "\n".join(
            [
                "Automatic discretisation against fixed steps per gap (RadauIIA5; "
                "PiNet, seed 0; the relative error is |learned - true| / |true| over "
                "the true coefficients, the spurious coefficient the largest "
                f"|learned| of a monomial not in the truth){done}.",
                "",
                markdown_table(HEADERS, rows),
                "",
                machine_description(),
            ]
        )
        write_output("auto_steps_quick.md" if quick else "auto_steps.md", text)


if __name__ == "__main__":
    main()
