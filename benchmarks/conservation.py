"""Linear invariants on a badly scaled stiff problem: E5 of the stiff DETEST set
(chemical pyrolysis), whose y1 is about 1e-3 and the others 1e-10 and below, and whose
y2 - y3 - y4 is an invariant (0 here), integrated over 13 decades of time.

    python benchmarks/conservation.py            # rtol 1e-4 and 1e-6
    python benchmarks/conservation.py --quick    # rtol 1e-4 only

Writes `docs/benchmarks/conservation.md` (`conservation_quick.md`).

- atol 1.11e-24, as in the test set: the small components are resolved.
- Drift: max |y2 - y3 - y4| over 60 output times (log-spaced, 1e-4 to 1e13, dense
  output), also in units of eps max|y| (eps |y1(0)| = 3.9e-19): below one is round-off
  of the largest component.
- Error: the largest absolute error of y2, y3, y4 at those times against SciPy `Radau`
  at rtol 1e-12, atol 1e-30.
- To show how much of the drift is chance, SciPy's `Radau` is also run with its Newton
  tolerance multiplied by 1/4 to 16, and `RadauIIA5` with other Newton tolerances
  (`kappa`). A systematic drift would grow with the Newton tolerance.
"""

import argparse

import jax


jax.config.update("jax_enable_x64", True)

import diffrax
import diffrax_implicit_node as din
import jax.numpy as jnp
import numpy as np
import scipy.integrate
from _problems import machine_description, markdown_table, write_output


A, B, C, M = 7.89e-10, 1.1e7, 1.13e3, 1e6
Y0 = np.array([1.76e-3, 0.0, 0.0, 0.0])
T1 = 1e13
TS = np.geomspace(1e-4, T1, 60)
ATOL = 1.11e-24
ROUND_OFF = np.finfo(np.float64).eps * np.max(np.abs(Y0))


def e5(y, xp):
    y1, y2, y3, y4 = y
    return xp.stack(
        [
            -A * y1 - B * y1 * y3,
            A * y1 - M * C * y2 * y3,
            A * y1 - B * y1 * y3 - M * C * y2 * y3 + C * y4,
            B * y1 * y3 - C * y4,
        ]
    )


def e5_jacobian(t, y):
    del t
    y1, y2, y3, y4 = y
    return np.array(
        [
            [-A - B * y3, 0, -B * y1, 0],
            [A, -M * C * y3, -M * C * y2, 0],
            [A - B * y3, -M * C * y3, -B * y1 - M * C * y2, C],
            [B * y3, 0, B * y1, -C],
        ]
    )


def scipy_ys(rtol, atol, newton_tol_factor=1.0) -> tuple[np.ndarray, int]:
    class ScaledNewtonRadau(scipy.integrate.Radau):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.newton_tol *= newton_tol_factor

    sol = scipy.integrate.solve_ivp(
        lambda t, y: e5(y, np),
        (0.0, T1),
        Y0,
        method=ScaledNewtonRadau,
        jac=e5_jacobian,
        rtol=rtol,
        atol=atol,
        dense_output=True,
    )
    assert sol.success, sol.message
    return sol.sol(TS).T, len(sol.t) - 1


def jax_ys(solver, controller) -> tuple[np.ndarray, int]:
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: e5(y, jnp)),
        solver,
        0.0,
        T1,
        None,
        jnp.asarray(Y0),
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(ts=jnp.asarray(TS)),
        max_steps=100_000,
    )
    return np.asarray(sol.ys), int(sol.stats["num_accepted_steps"])


def variants(rtol):
    pid = diffrax.PIDController(rtol=rtol, atol=ATOL)
    predictive = din.PredictiveController(rtol=rtol, atol=ATOL)

    def newton(kappa):
        return din.SimplifiedNewton(rtol=rtol, atol=ATOL, kappa=kappa)

    for factor in (0.25, 1.0, 4.0, 16.0):
        yield (
            f"scipy Radau, Newton tol x {factor:g}",
            (lambda factor=factor: scipy_ys(rtol, ATOL, factor)),
        )
    jax_variants = {
        "RadauIIA5 (PID)": (din.RadauIIA5(), pid),
        "RadauIIA5 (PID, no reuse)": (din.RadauIIA5(reuse_jacobian=False), pid),
        "RadauIIA5 (predictive)": (din.RadauIIA5(), predictive),
        "RadauIIA5 (PID, kappa 1e-4)": (din.RadauIIA5(root_finder=newton(1e-4)), pid),
        "RadauIIA5 (PID, kappa 1e-5)": (din.RadauIIA5(root_finder=newton(1e-5)), pid),
        "diffrax.Kvaerno5 (PID)": (diffrax.Kvaerno5(), pid),
    }
    for name, (solver, controller) in jax_variants.items():
        yield (
            name,
            (lambda solver=solver, controller=controller: jax_ys(solver, controller)),
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="rtol 1e-4 only")
    args = parser.parse_args()
    rtols = (1e-4,) if args.quick else (1e-4, 1e-6)
    reference, _ = scipy_ys(1e-12, 1e-30)
    rows = []
    for rtol in rtols:
        for name, run in variants(rtol):
            ys, steps = run()
            drift = np.max(np.abs(ys[:, 1] - ys[:, 2] - ys[:, 3]))
            error = np.max(np.abs(ys[:, 1:] - reference[:, 1:]))
            rows.append([f"{rtol:.0e}", name, drift, drift / ROUND_OFF, error, steps])
            print(rows[-1], flush=True)
    table = markdown_table(
        [
            "rtol",
            "solver",
            "max abs(y2 - y3 - y4)",
            "in eps max abs(y)",
            "max abs error y2-y4",
            "accepted steps",
        ],
        rows,
    )
    text = (
        f"{machine_description()}\n\nE5 on [0, 1e13], atol {ATOL:g}, 60 log-spaced "
        "output times from dense output. Reference: SciPy `Radau` at rtol 1e-12, atol "
        f"1e-30. eps max abs(y) = {ROUND_OFF:.2g}.\n\n{table}\n"
    )
    print(text)
    path = write_output(
        "conservation_quick.md" if args.quick else "conservation.md", text
    )
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
