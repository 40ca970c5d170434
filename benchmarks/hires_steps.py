"""Why `RadauIIA5` needs more steps than SciPy's `Radau` for the same error at t1 on
HIRES: the same solver on mixed step sequences, and the two error estimates on the same
steps.

    python benchmarks/hires_steps.py            # rtol 1e-5, 1e-6, 1e-7
    python benchmarks/hires_steps.py --quick    # rtol 1e-6

Writes `docs/benchmarks/hires_steps.md` (`hires_steps_quick.md`).

- `RadauIIA5` with `PredictiveController(rtol, atol = 1e-3 rtol)`; SciPy's `Radau` with
  the same tolerances and the analytic Jacobian.
- Spliced: `RadauIIA5` (Newton tolerances as the controller would set them) through
  `diffrax.StepTo` on SciPy's step times up to T and its own adaptive ones after T
  ("SciPy, then ours"), or the other way round. The error at t1 follows the steps
  after T.
- Error estimates: along SciPy's accepted steps, `RadauIIA5`'s scaled error estimate
  of each step (taken alone, from SciPy's state at its start) over SciPy's own.
- Error: largest componentwise relative error at t1, relative to max(|y|, 1e-3),
  against SciPy `Radau` at rtol 1e-12.
"""

import argparse

import jax


jax.config.update("jax_enable_x64", True)

import diffrax
import diffrax_implicit_node as din
import jax.numpy as jnp
import numpy as np
import scipy.integrate
from _problems import (
    HIRES,
    machine_description,
    markdown_table,
    reference_solution,
    relative_error,
    scipy_solve,
    write_output,
)


SPLICE_TIMES = (1.0, 5.0, 20.0, 100.0, 250.0, 300.0, 318.0)


def tolerances(rtol: float) -> tuple[float, float]:
    return rtol, rtol * HIRES.scale


def our_step_times(rtol: float) -> np.ndarray:
    rtol, atol = tolerances(rtol)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(HIRES.vector_field),
        din.RadauIIA5(),
        HIRES.t0,
        HIRES.t1,
        None,
        jnp.asarray(HIRES.y0),
        stepsize_controller=din.PredictiveController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(steps=True),
        max_steps=4096,
    )
    ts = np.asarray(sol.ts)
    return np.concatenate([[HIRES.t0], ts[np.isfinite(ts)]])


def error_on_steps(rtol: float, ts: np.ndarray, reference: np.ndarray) -> float:
    rtol, atol = tolerances(rtol)
    solver = din.RadauIIA5(
        root_finder=din.SimplifiedNewton(rtol=rtol, atol=atol, kappa=None)
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(HIRES.vector_field),
        solver,
        HIRES.t0,
        HIRES.t1,
        None,
        jnp.asarray(HIRES.y0),
        stepsize_controller=diffrax.StepTo(ts=jnp.asarray(ts)),
        max_steps=len(ts),
        throw=False,
    )
    if sol.result != diffrax.RESULTS.successful:
        return np.nan
    return relative_error(sol.ys[-1], reference, HIRES.error_floor)  # pyright: ignore


def splice_rows(rtol: float, reference: np.ndarray) -> list[list[object]]:
    scipy_ts = scipy_solve(HIRES, rtol).t
    ours_ts = our_step_times(rtol)
    rows = [
        [f"{rtol:.0e}", "SciPy's steps", "", len(scipy_ts) - 1],
        [f"{rtol:.0e}", "ours", "", len(ours_ts) - 1],
    ]
    rows[0].append(error_on_steps(rtol, scipy_ts, reference))
    rows[1].append(error_on_steps(rtol, ours_ts, reference))
    for split in SPLICE_TIMES:
        for name, before, after in (
            ("SciPy, then ours", scipy_ts, ours_ts),
            ("ours, then SciPy", ours_ts, scipy_ts),
        ):
            ts = np.concatenate([before[before <= split], after[after > split]])
            rows.append(
                [
                    f"{rtol:.0e}",
                    name,
                    split,
                    len(ts) - 1,
                    error_on_steps(rtol, ts, reference),
                ]
            )
    return rows


def estimate_ratios(rtol: float) -> list[object]:
    """Our scaled error estimate over SciPy's, on each of SciPy's accepted steps."""
    rtol, atol = tolerances(rtol)
    steps = []

    class RecordingRadau(scipy.integrate.Radau):
        def _step_impl(self):
            t, y = self.t, self.y.copy()
            result = super()._step_impl()
            steps.append((t, y, self.t - t, self.error_norm_old))
            return result

    scipy_solve(HIRES, rtol, RecordingRadau)
    solver = din.RadauIIA5(root_finder=din.SimplifiedNewton(rtol=rtol, atol=atol))
    term = diffrax.ODETerm(HIRES.vector_field)

    @jax.jit
    def scaled_error(t0, y0, dt):
        state = solver.init(term, t0, t0 + dt, y0, None)
        y1, error, _, _, _ = solver.step(term, t0, t0 + dt, y0, None, state, False)
        scale = atol + rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1))
        return jnp.sqrt(jnp.mean((error / scale) ** 2))

    ratios = np.array(
        [
            float(scaled_error(jnp.asarray(t), jnp.asarray(y), jnp.asarray(dt))) / e
            for t, y, dt, e in steps
            if e > 0
        ]
    )
    return [
        f"{rtol:.0e}",
        len(ratios),
        *np.percentile(ratios, [10, 50, 90]),
        ratios.max(),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="rtol 1e-6 only")
    args = parser.parse_args()
    rtols = (1e-6,) if args.quick else (1e-5, 1e-6, 1e-7)
    reference = reference_solution(HIRES, 1e-12)
    splices = [row for rtol in rtols for row in splice_rows(rtol, reference)]
    ratios = [estimate_ratios(rtol) for rtol in rtols]
    text = (
        f"{machine_description()}\n\n"
        "Error at t1 of `RadauIIA5` on given step sequences (`diffrax.StepTo`):\n\n"
        + markdown_table(
            ["rtol", "steps", "switch at T", "accepted steps", "error at t1"],
            splices,
        )
        + "\n\nOur scaled error estimate over SciPy's, on SciPy's accepted steps:\n\n"
        + markdown_table(
            ["rtol", "steps", "10th percentile", "median", "90th percentile", "max"],
            ratios,
        )
        + "\n"
    )
    print(text)
    path = write_output(
        "hires_steps_quick.md" if args.quick else "hires_steps.md", text
    )
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
