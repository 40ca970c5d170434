"""The residual Jacobian of a Levenberg--Marquardt fit of HIRES: forward sensitivities
through each implicit step (what `fit` uses) against `jax.jacfwd` through the solver
(what it used before), in the same run.

    python benchmarks/jacobian.py            # 1980 windows x 4 steps x 360 parameters
    python benchmarks/jacobian.py --quick    # 198 windows, smoke run

Writes `docs/benchmarks/jacobian.md` (`jacobian_quick.md`).

The case: the identifiable HIRES design of the reproduction (20 trajectories from
Fronk & Petzold's Table 7, 100 equally spaced observations on [0, 20], so 1980
windows), a degree-2 `PolynomialLibrary` at the true HIRES coefficients (8 x 45 = 360
parameters), `RadauIIA5` with Newton tolerances 1e-10 and 4 constant steps per
window, residuals scaled by each component's largest value. Variants:

- `sensitivities`: `fit`'s Jacobian: each window is stepped with the solver's own
  `step`, and each step's sensitivities solve the exact stage system
  `(I - (A kron I) blockdiag(h J_j)) dZ = ...` with one LU for all 360 columns.
- `jacfwd`: `jax.jacfwd` of the residuals through `diffeqsolve` (360 tangents pushed
  through Newton's method, the implicit-function-theorem solve, the error estimate
  and the dense output of every step).

Each variant runs in its own subprocess (so peak RSS is its own), compiles with
`jit(...).lower(...).compile()`, and is timed `--repeats` times: minimum wall-clock
and minimum CPU time (all threads of the process) per Jacobian. The Jacobians are
compared row by row; `--jacfwd-trajectories` runs `jacfwd` on the first few
trajectories only (rows of a window depend on that window alone), when the full size
takes too long.
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.flatten_util


jax.config.update("jax_enable_x64", True)

import diffrax_implicit_node as din
import diffrax_implicit_node._data as din_data
import diffrax_implicit_node._windows as din_windows
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import sympy
from _problems import machine_description, markdown_table, write_output


VARIANTS = ("sensitivities", "jacfwd")
NEWTON_TOL = 1e-10
T1 = 20.0
POINTS = 100


def library_of(equations: list[sympy.Expr], degree: int) -> din.PolynomialLibrary:
    """A library whose coefficients are those of `equations` (in `x0, x1, ...`)."""
    size = len(equations)
    variables = sympy.symbols(f"x0:{size}")
    library = din.PolynomialLibrary(size, degree)
    names = [
        str(sympy.Mul(*(v**e for v, e in zip(variables, row))))
        for row in library.exponents
    ]
    table = [din.coefficients(e, variables) for e in equations]
    extra = {m for row in table for m in row} - set(names)
    if extra:
        raise ValueError(f"Monomials {sorted(extra)} are not in the library.")
    matrix = jnp.array([[row.get(name, 0.0) for name in names] for row in table])
    return eqx.tree_at(lambda m: m.coefficients, library, matrix)


def hires_residuals(
    trajectories: int, steps: int, t1: float = T1, points: int = POINTS
) -> tuple[din_windows.Residuals, din.PolynomialLibrary]:
    """`fit`'s residuals for HIRES (first `trajectories` of Table 7) and the library
    at the true coefficients."""
    example = din.EXAMPLES["hires"]
    ts, ys = example.data(np.linspace(0.0, t1, points))
    ys = ys[:trajectories]
    windows = din_windows.windows_from(din_data.as_observations(ts, ys), steps)
    scale = jnp.asarray(np.abs(ys).max(axis=(0, 1)))
    solver = din.RadauIIA5(
        root_finder=din.SimplifiedNewton(rtol=NEWTON_TOL, atol=NEWTON_TOL),
        root_find_max_steps=50,
    )
    field = din.NeuralVectorField(library_of(example.true_equations(), 2))
    trainable, frozen = eqx.partition(field, eqx.is_inexact_array)
    residuals = din_windows.Residuals(frozen, windows, scale, solver, steps, args=None)
    return residuals, trainable


def jacobian_function(variant: str, residuals: din_windows.Residuals, unflatten):
    if variant == "sensitivities":
        # `fit`'s least-squares Jacobian; (jacobian, value) as `jacfwd` below.
        return lambda flat: residuals.value_and_jacobian(unflatten(flat))[::-1]

    def value_and_value(flat):
        value = residuals(unflatten(flat))
        return value, value

    return jax.jacfwd(value_and_value, has_aux=True)


def measure(variant: str, trajectories: int, steps: int, repeats: int, out: str):
    residuals, trainable = hires_residuals(trajectories, steps)
    flat, unflatten = jax.flatten_util.ravel_pytree(trainable)
    function = jax.jit(jacobian_function(variant, residuals, unflatten))
    start = time.perf_counter()
    compiled = function.lower(flat).compile()
    compile_time = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        jacobian, value = jax.block_until_ready(compiled(flat))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    np.save(out, np.asarray(jacobian))
    return dict(
        variant=variant,
        windows=int(residuals.windows.t0.shape[0]),
        compile=compile_time,
        wall=min(walls),
        cpu=min(cpus),
        rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        shape=list(jacobian.shape),
        loss=float(jnp.sum(value**2)),
    )


def measure_in_subprocess(variant, trajectories, steps, repeats, out, timeout):
    command = [sys.executable, __file__, "--measure", variant, "--out", out]
    command += ["--trajectories", str(trajectories), "--steps", str(steps)]
    command += ["--repeats", str(repeats)]
    result = subprocess.run(
        command, check=True, capture_output=True, text=True, timeout=timeout
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trajectories")
    parser.add_argument("--trajectories", type=int, default=None)
    parser.add_argument("--jacfwd-trajectories", type=int, default=None)
    parser.add_argument("--steps", type=int, default=4, help="steps per window")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=1800, help="per variant (s)")
    # Internal: measure one variant and print its record as JSON.
    parser.add_argument("--measure", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    trajectories = args.trajectories or (2 if args.quick else 20)
    repeats = args.repeats or (2 if args.quick else 3)

    if args.measure is not None:
        record = measure(args.measure, trajectories, args.steps, repeats, args.out)
        print(json.dumps(record))
        return

    sizes = dict(
        sensitivities=trajectories,
        jacfwd=args.jacfwd_trajectories or trajectories,
    )
    load = os.getloadavg()[0]
    records, jacobians = {}, {}
    with tempfile.TemporaryDirectory() as directory:
        for variant in VARIANTS:
            out = str(pathlib.Path(directory) / f"{variant}.npy")
            records[variant] = measure_in_subprocess(
                variant, sizes[variant], args.steps, repeats, out, args.timeout
            )
            jacobians[variant] = np.load(out)
            print(records[variant], file=sys.stderr)
    rows = min(len(j) for j in jacobians.values())
    fast, reference = jacobians["sensitivities"][:rows], jacobians["jacfwd"][:rows]
    difference = float(np.max(np.abs(fast - reference)) / np.max(np.abs(reference)))
    table = markdown_table(
        [
            "variant",
            "windows",
            "Jacobian",
            "wall min (s)",
            "CPU min (s)",
            "compile (s)",
            "peak RSS (MiB)",
        ],
        [
            [
                r["variant"],
                r["windows"],
                " x ".join(map(str, r["shape"])),
                r["wall"],
                r["cpu"],
                r["compile"],
                r["rss_mib"],
            ]
            for r in records.values()
        ],
    )
    suffix = "_quick" if args.quick else ""
    text = (
        f"{machine_description()} Load average at the start: "
        f"{load:.1f}.\n\n"
        f"HIRES, {trajectories} trajectories x {POINTS - 1} windows on [0, {T1:g}], "
        f"{args.steps} RadauIIA5 steps per window (Newton tolerance {NEWTON_TOL:g}), "
        "degree-2 PolynomialLibrary at the true coefficients. Time per Jacobian: "
        f"minimum of {repeats} after compilation; each variant in its own subprocess."
        f"\n\n{table}\n\n"
        f"Largest difference of the two Jacobians over the first {rows} rows, "
        f"relative to the largest entry: {difference:.2e}.\n"
    )
    write_output(f"jacobian{suffix}.md", text)
    print(text)
    if difference > 1e-10:
        raise SystemExit("The Jacobians differ by more than 1e-10.")


if __name__ == "__main__":
    main()
