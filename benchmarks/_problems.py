"""Problems and helpers shared by the benchmark scripts.

Each problem carries a JAX vector field (for Diffrax) and plain-NumPy versions of the
right-hand side and its analytic Jacobian (for SciPy), so that SciPy is not slowed
down by JAX dispatch and the comparison is with SciPy at its best.
"""

import dataclasses
import datetime
import functools
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import scipy.integrate


ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "docs" / "benchmarks"

# The reference is SciPy's Radau at this tolerance (atol scaled as for the problem);
# at 1e-13 it agrees with Radau at 1e-12 to about 1e-12 relative (see README).
REFERENCE_RTOL = 1e-13


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    vector_field: Callable  # (t, y, args) -> dy/dt, JAX
    rhs_numpy: Callable  # (t, y) -> dy/dt, NumPy
    jacobian_numpy: Callable  # (t, y) -> d(dy/dt)/dy, NumPy
    y0: tuple[float, ...]
    t0: float
    t1: float
    # Typical size of the solution: absolute tolerances are this times the relative.
    scale: float
    # Errors are relative to max(|reference|, error_floor), componentwise.
    error_floor: float = 0.0


def _hires(y, xp):
    y1, y2, y3, y4, y5, y6, y7, y8 = y
    return xp.stack(
        [
            -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
            1.71 * y1 - 8.75 * y2,
            -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4,
            -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -280 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
            280 * y6 * y8 - 1.81 * y7,
            -280 * y6 * y8 + 1.81 * y7,
        ]
    )


def hires_vector_field(t, y, args):
    del t, args
    return _hires(y, jnp)


def _hires_numpy(t, y):
    del t
    return _hires(y, np)


def _hires_jacobian_numpy(t, y):
    del t
    y6, y8 = y[5], y[7]
    jac = np.zeros((8, 8))
    jac[0, :3] = (-1.71, 0.43, 8.32)
    jac[1, :2] = (1.71, -8.75)
    jac[2, 2:5] = (-10.03, 0.43, 0.035)
    jac[3, 1:4] = (8.32, 1.71, -1.12)
    jac[4, 4:7] = (-1.745, 0.43, 0.43)
    jac[5, 3:8] = (0.69, 1.71, -0.43 - 280 * y8, 0.69, -280 * y6)
    jac[6, 5:8] = (280 * y8, -1.81, 280 * y6)
    jac[7, 5:8] = (-280 * y8, 1.81, -280 * y6)
    return jac


VDP_MU = 1000.0


def vdp_vector_field(t, y, args):
    del t, args
    return jnp.stack([y[1], VDP_MU * (1 - y[0] ** 2) * y[1] - y[0]])


def _vdp_numpy(t, y):
    del t
    return np.array([y[1], VDP_MU * (1 - y[0] ** 2) * y[1] - y[0]])


def _vdp_jacobian_numpy(t, y):
    del t
    return np.array(
        [[0.0, 1.0], [-2 * VDP_MU * y[0] * y[1] - 1, VDP_MU * (1 - y[0] ** 2)]]
    )


HIRES = Problem(
    name="HIRES",
    vector_field=hires_vector_field,
    rhs_numpy=_hires_numpy,
    jacobian_numpy=_hires_jacobian_numpy,
    y0=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057),
    t0=0.0,
    t1=321.8122,
    # Its components are 1e-5 to 1e-2 for most of the interval.
    scale=1e-3,
)

VAN_DER_POL = Problem(
    name="van der Pol (mu=1000)",
    vector_field=vdp_vector_field,
    rhs_numpy=_vdp_numpy,
    jacobian_numpy=_vdp_jacobian_numpy,
    y0=(2.0, 0.0),
    t0=0.0,
    # Two relaxation oscillations (period ~1614): t1 lies on a slow branch.
    t1=3000.0,
    scale=1.0,
)


def _robertson(y, xp):
    y1, y2, y3 = y
    return xp.stack(
        [
            -0.04 * y1 + 1e4 * y2 * y3,
            0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2,
            3e7 * y2**2,
        ]
    )


def robertson_vector_field(t, y, args):
    del t, args
    return _robertson(y, jnp)


def _robertson_numpy(t, y):
    del t
    return _robertson(y, np)


def _robertson_jacobian_numpy(t, y):
    del t
    _, y2, y3 = y
    return np.array(
        [
            [-0.04, 1e4 * y3, 1e4 * y2],
            [0.04, -1e4 * y3 - 6e7 * y2, -1e4 * y2],
            [0.0, 6e7 * y2, 0.0],
        ]
    )


ROBERTSON = Problem(
    name="Robertson",
    vector_field=robertson_vector_field,
    rhs_numpy=_robertson_numpy,
    jacobian_numpy=_robertson_jacobian_numpy,
    y0=(1.0, 0.0, 0.0),
    t0=0.0,
    t1=1e5,
    # y2 peaks at 4e-5 and is 1e-8 at t1; y1 and y3 are of order one.
    scale=1e-8,
)

# A neural vector field, the case this package is for: a fixed random MLP with two
# hidden layers of width 256 (tanh) on top of linear decay with rates from 1 to 1000.
# Its Jacobian costs 32 forward-mode passes through the MLP, so reusing it pays.
NEURAL_SIZE, NEURAL_WIDTH = 32, 256


def _neural_weights():
    rng = np.random.default_rng(0)
    sizes = [NEURAL_SIZE, NEURAL_WIDTH, NEURAL_WIDTH, NEURAL_SIZE]
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        # The default initialisation of `equinox.nn.Linear`.
        bound = 1 / np.sqrt(fan_in)
        layers.append(
            (
                rng.uniform(-bound, bound, (fan_out, fan_in)),
                rng.uniform(-bound, bound, fan_out),
            )
        )
    decay = -np.logspace(0, 3, NEURAL_SIZE)
    return layers, decay


_NEURAL_LAYERS, _NEURAL_DECAY = _neural_weights()


def _neural(y, xp):
    (w1, b1), (w2, b2), (w3, b3) = _NEURAL_LAYERS
    h1 = xp.tanh(w1 @ y + b1)
    h2 = xp.tanh(w2 @ h1 + b2)
    return _NEURAL_DECAY * y + w3 @ h2 + b3, (h1, h2)


def neural_vector_field(t, y, args):
    del t, args
    return _neural(y, jnp)[0]


def _neural_numpy(t, y):
    del t
    return _neural(y, np)[0]


def _neural_jacobian_numpy(t, y):
    del t
    (w1, _), (w2, _), (w3, _) = _NEURAL_LAYERS
    _, (h1, h2) = _neural(y, np)
    inner = (1 - h1**2)[:, None] * w1
    return np.diag(_NEURAL_DECAY) + w3 @ ((1 - h2**2)[:, None] * (w2 @ inner))


NEURAL = Problem(
    name=f"neural (MLP {NEURAL_SIZE}-{NEURAL_WIDTH}-{NEURAL_WIDTH}-{NEURAL_SIZE})",
    vector_field=neural_vector_field,
    rhs_numpy=_neural_numpy,
    jacobian_numpy=_neural_jacobian_numpy,
    y0=(1.0,) * NEURAL_SIZE,
    t0=0.0,
    t1=10.0,
    # Its components settle at 1e-5 to 5e-2.
    scale=1e-3,
    error_floor=1e-3,
)


def scipy_solve(
    problem: Problem,
    rtol: float,
    method: str | type[scipy.integrate.OdeSolver] = "Radau",
):
    """SciPy's `solve_ivp` on `problem` with its analytic Jacobian, at `rtol` and
    `atol = rtol x problem.scale`; `method` as for `solve_ivp`."""
    return scipy.integrate.solve_ivp(
        problem.rhs_numpy,
        (problem.t0, problem.t1),
        np.asarray(problem.y0),
        method=method,
        jac=problem.jacobian_numpy,
        rtol=rtol,
        atol=rtol * problem.scale,
    )


@functools.cache
def reference_solution(problem: Problem, rtol: float = REFERENCE_RTOL) -> np.ndarray:
    """The solution at `problem.t1` from SciPy's `Radau` at a tight tolerance."""
    sol = scipy_solve(problem, rtol)
    if not sol.success:
        raise RuntimeError(f"Reference solve of {problem.name} failed: {sol.message}")
    return sol.y[:, -1]


def relative_error(y, reference, floor: float = 0.0) -> float:
    """Largest componentwise relative error, relative to `max(|reference|, floor)`.
    Every component of the HIRES and van der Pol references is well away from zero
    at the final time; those of the neural problem go down to 1e-5."""
    y = np.asarray(y)
    if not np.all(np.isfinite(y)):
        return float("nan")
    return float(np.max(np.abs(y - reference) / np.maximum(np.abs(reference), floor)))


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`, each waited for to finish."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def machine_description() -> str:
    """CPU model, core count, versions and date, as a line of Markdown."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    import diffrax
    import scipy

    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"Machine: {cpu}, {cores or os.cpu_count()} cores, "
        f"{jax.devices()[0].platform.upper()} backend; jax {jax.__version__}, "
        f"diffrax {diffrax.__version__}, scipy {scipy.__version__}, "
        f"Python {platform.python_version()}; float64; measured {date}."
    )


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(value):
        if isinstance(value, float):
            if np.isnan(value):
                return "–"
            return f"{value:.3g}"
        return str(value)

    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_output(filename: str, text: str) -> pathlib.Path:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / filename
    path.write_text(text)
    return path


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x over the finite points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(y) & (y > 0)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])
