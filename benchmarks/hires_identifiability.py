"""Which HIRES designs identify the equations: singular values of the scaled residual
Jacobian at the true coefficients, for the paper-like design and the identifiable one.

    python benchmarks/hires_identifiability.py

Prints a Markdown table (for `docs/reproduction/hires.md`). The residuals are those of
`fit` (each gap between consecutive observations integrated by `RadauIIA5` in constant
steps, scaled by each component's largest value) for a degree-2 `PolynomialLibrary`
(8 equations x 45 monomials = 360 coefficients), with the Jacobian from `fit`'s
forward sensitivities. A coefficient combination along a right singular vector with a
singular value below 1e-12 of the largest changes the residuals by less than
round-off: no loss built on these residuals can determine it.
"""

import time

import jax
import jax.flatten_util


jax.config.update("jax_enable_x64", True)

import numpy as np
from _problems import machine_description, markdown_table
from jacobian import hires_residuals


# (description, t1, points, trajectories, steps per gap)
DESIGNS = (
    ("paper-like: [0, 321.8], 100 points", 321.8122, 100, 20, 64),
    ("identifiable: [0, 20], 100 points", 20.0, 100, 20, 8),
    ("[0, 20], 100 points, 5 trajectories", 20.0, 100, 5, 8),
)


def singular_values(t1: float, points: int, trajectories: int, steps: int):
    residuals, trainable = hires_residuals(trajectories, steps, t1=t1, points=points)
    flat, unflatten = jax.flatten_util.ravel_pytree(trainable)
    value, jacobian = jax.jit(
        lambda flat: residuals.value_and_jacobian(unflatten(flat))
    )(flat)
    if not np.all(np.isfinite(value)):
        raise RuntimeError(f"A solve failed at the truth ({steps} steps per gap).")
    return np.linalg.svd(np.asarray(jacobian), compute_uv=False), float(
        np.max(np.abs(value))
    )


def main():
    rows = []
    for description, t1, points, trajectories, steps in DESIGNS:
        start = time.perf_counter()
        values, residual = singular_values(t1, points, trajectories, steps)
        relative = values / values[0]
        rows.append(
            [
                description,
                trajectories,
                steps,
                values.size,
                int(np.sum(relative < 1e-12)),
                int(np.sum(relative < 1e-8)),
                f"{values[0] / values[-1]:.2e}",
                f"{residual:.1e}",
                time.perf_counter() - start,
            ]
        )
        print(rows[-1], flush=True)
    print(machine_description())
    print()
    print(
        markdown_table(
            [
                "design",
                "trajectories",
                "steps per gap",
                "coefficients",
                "singular values < 1e-12 x largest",
                "< 1e-8 x largest",
                "condition",
                "largest scaled residual at the truth",
                "time (s)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
