"""Automatic discretisation (`steps_per_interval="auto"`) against fixed steps per gap:
the largest coefficient error, whether the fit is verified, the steps chosen and the
time, on stiff problems whose transients span one or two gaps.

    python benchmarks/auto_steps.py [--quick]

Problems: the issue's two-species system x0' = -41 x0 + 40 x1^2, x1' = x0 - x1 - x1^2
(3 trajectories x 60 points on [0, 3]: h * 41 = 2.1); `nonlinear2d` (Kaps, rate 1000)
and `nonlinear3d` with few points. Levenberg-Marquardt, RadauIIA5, PiNet of degree 2.
"""

import argparse

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


def max_error(example: din.Example, result: din.FitResult) -> float:
    errors = [
        row.relative_error if row.relative_error is not None else abs(row.learned)
        for row in example.compare(din.to_sympy(result.model.learned))
    ]
    return max(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    cases = [(TWO_SPECIES, 60), (din.EXAMPLES["nonlinear2d"], 24)]
    if not quick:
        cases.append((din.EXAMPLES["nonlinear3d"], 24))
    settings = ["auto", 1, 4, 16] if not quick else ["auto", 1]
    rows = []
    for example, points in cases:
        ts, ys = example.data(points)
        for steps in settings:
            run = train_by_name(
                example.model(jr.key(0)),
                ts,
                ys,
                solver="radau5",
                optimiser="levenberg-marquardt",
                epochs=20 if quick else 300,
                steps=steps,
                progress=False,
            )
            result = run.result
            row = [
                f"{example.name} (N={points})",
                str(steps),
                f"{max_error(example, result):.2e}",
                "yes" if result.verification.verified else "**no**",
                f"{result.verification.trajectory_error:.1e}",
                f"{result.verification.discretisation_bias:.1e}",
                run.steps_summary(),
                f"{len(result.losses)}",
                f"{run.seconds:.0f} s",
            ]
            print(" | ".join(row), flush=True)
            rows.append(row)
    headers = [
        "problem",
        "steps",
        "max coefficient error",
        "verified",
        "trajectory error",
        "discretisation bias",
        "steps chosen",
        "epochs",
        "time",
    ]
    text = "\n".join(
        [
            "Automatic discretisation against fixed steps per gap (RadauIIA5, "
            "Levenberg-Marquardt; error: the largest |learned - true| / |true| of a "
            "true coefficient, or the largest spurious coefficient).",
            "",
            markdown_table(headers, rows),
            "",
            machine_description(),
        ]
    )
    write_output("auto_steps_quick.md" if quick else "auto_steps.md", text)


if __name__ == "__main__":
    main()
