"""The command line: `python -m diffrax_implicit_node {reproduce,fit} ...`."""

import argparse
import csv
import json
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.random as jr
import numpy as np
import sympy

from ._examples import EXAMPLES
from ._model import NeuralVectorField
from ._names import learned_from_name, MODEL_NAMES, OPTIMISER_NAMES, SOLVER_NAMES
from ._pinet import PiNet
from ._polynomial import PolynomialLibrary
from ._runs import train_by_name, TrainingRun
from ._symbolic import coefficients, equations_table, to_sympy
from ._uncertainty import Uncertainty
from ._verify import Verification


class _Defaults(NamedTuple):
    optimiser: str
    epochs: int
    steps: int | Literal["auto"]


# Stiff data makes the loss ill conditioned: Levenberg-Marquardt copes, L-BFGS stalls.
# The steps per gap are chosen, per gap, until the solver's error is below the data's.
_FIT_DEFAULTS = _Defaults(optimiser="levenberg-marquardt", epochs=300, steps="auto")

# The exit status of a fit that trained but whose model does not reproduce the data.
UNVERIFIED_STATUS = 3


class _UserError(Exception):
    """A mistake in the command line or the data: reported in one line, no traceback."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _steps(text: str) -> int | Literal["auto"]:
    return "auto" if text == "auto" else _positive_int(text)


def _device_count(text: str) -> int | Literal["all"]:
    return "all" if text == "all" else _positive_int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffrax_implicit_node",
        description="Learn the equations of stiff ODEs from data with polynomial "
        "neural ODEs trained through implicit solvers (float64 throughout).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add_common(
        command: argparse.ArgumentParser, defaults: _Defaults | None
    ) -> None:
        # The examples bring their own defaults.
        optimiser, epochs, steps = defaults or ("per example",) * 3
        command.add_argument(
            "--solver",
            choices=SOLVER_NAMES,
            default="radau5",
            help="the solver to train with (default: radau5)",
        )
        command.add_argument(
            "--optimiser",
            choices=OPTIMISER_NAMES,
            help="levenberg-marquardt copes with stiff data; lbfgs is cheaper per "
            f"epoch (default: {optimiser})",
        )
        command.add_argument(
            "--epochs",
            type=_positive_int,
            help="most steps of the optimiser; Levenberg-Marquardt stops earlier "
            f"when it converges (default: {epochs})",
        )
        command.add_argument(
            "--steps",
            type=_steps,
            help="solver steps between consecutive observations, to resolve fast "
            "transients inside a gap: a number, or 'auto' to double them gap by gap "
            f"until the solver's error is below the data's (default: {steps})",
        )
        command.add_argument(
            "--model",
            choices=MODEL_NAMES,
            help="the model: a PiNet, or a polynomial library linear in its "
            f"coefficients (default: {'per example' if defaults is None else 'pinet'})",
        )
        command.add_argument(
            "--seed", type=int, default=0, help="initialisation seed (default: 0)"
        )
        command.add_argument(
            "--devices",
            type=_device_count,
            default=1,
            metavar="N",
            help="train data parallel on N devices, or 'all' visible ones; the "
            "windows are split across them (default: 1)",
        )
        command.add_argument(
            "--noise",
            type=_positive_float,
            metavar="SIGMA",
            help="the standard deviation of the observations' noise, relative to "
            "each component's largest magnitude, if known (default: estimated "
            "from the residuals)",
        )
        command.add_argument(
            "--prune",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="remove the terms that the data do not show (within two standard "
            "errors of zero), refit the rest, and keep them removed only if the "
            "refitted equations still reproduce the data (default: on)",
        )
        command.add_argument("--out", type=pathlib.Path, help="write JSON here")
        command.add_argument("--quiet", action="store_true", help="no progress bar")

    reproduce = commands.add_parser(
        "reproduce",
        help="learn one of the example systems and compare with the truth",
        description="Learn one of the example systems from data of a tight-tolerance "
        "reference solve; print the true and learned equations side by side and the "
        "fractional relative error |learned - true| / |true| of every coefficient.",
    )
    reproduce.add_argument(
        "example",
        nargs="?",
        default="linear",
        choices=list(EXAMPLES),
        help="the example (default: linear)",
    )
    reproduce.add_argument(
        "--points",
        type=_positive_int,
        help="observations per trajectory (default: per example)",
    )
    add_common(reproduce, None)

    fit_command = commands.add_parser(
        "fit",
        help="learn a polynomial ODE from your data",
        description="Learn a polynomial ODE from observations: a CSV file with a "
        "header t,x0,x1,... and optionally a column `trajectory` numbering the "
        "trajectories, or an .npz file with arrays ts (T,) or (B, T) and ys "
        "(T, n) or (B, T, n).",
    )
    fit_command.add_argument("data", type=pathlib.Path, help="a .csv or .npz file")
    fit_command.add_argument(
        "--degree",
        type=_positive_int,
        default=2,
        help="the largest total degree of the polynomials (default: 2)",
    )
    fit_command.add_argument(
        "--width",
        type=_positive_int,
        help="hidden width of the PiNet (default: the number of monomials)",
    )
    add_common(fit_command, _FIT_DEFAULTS)
    return parser


def _read_csv(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise _UserError(f"{path} is empty.")
    header = [name.strip() for name in rows[0]]
    states = [name for name in header if name not in ("t", "trajectory")]
    expected = [f"x{i}" for i in range(len(states))]
    if "t" not in header:
        raise _UserError(f"{path} has no column 't' (columns: {', '.join(header)}).")
    if not states or sorted(states, key=lambda s: (len(s), s)) != expected:
        unexpected = [s for s in states if s not in expected]
        raise _UserError(
            f"{path}: expected state columns x0, x1, ..., got "
            f"{', '.join(states) or 'none'}"
            + (f" (unexpected: {', '.join(unexpected)})" if unexpected else "")
            + "."
        )
    if len(set(header)) != len(header):
        raise _UserError(f"{path} has repeated column names.")
    columns = {name: [] for name in header}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise _UserError(
                f"{path}, line {line}: {len(row)} values for {len(header)} columns."
            )
        for name, text in zip(header, row):
            try:
                columns[name].append(float(text))
            except ValueError:
                raise _UserError(
                    f"{path}, line {line}: column {name!r} is not a number: {text!r}."
                ) from None
    if not columns["t"]:
        raise _UserError(f"{path} has a header but no data.")
    ts = np.asarray(columns["t"])
    ys = np.stack([np.asarray(columns[name]) for name in expected], axis=-1)
    if "trajectory" not in columns:
        return ts, ys
    labels = np.asarray(columns["trajectory"])
    groups = [labels == label for label in dict.fromkeys(labels)]
    lengths = {int(group.sum()) for group in groups}
    if len(lengths) != 1:
        raise _UserError(
            f"{path}: the trajectories have different numbers of rows "
            f"({', '.join(map(str, sorted(lengths)))}); all must have the same."
        )
    return np.stack([ts[g] for g in groups]), np.stack([ys[g] for g in groups])


def _read_npz(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"ts", "ys"} - set(data.files)
            if missing:
                raise _UserError(
                    f"{path} has no array {' or '.join(sorted(missing))} (it has: "
                    f"{', '.join(data.files) or 'nothing'})."
                )
            return data["ts"], data["ys"]
    except ValueError as e:
        raise _UserError(f"{path} is not a valid .npz file: {e}") from None


def _read_data(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        if path.suffix.lower() == ".npz":
            return _read_npz(path)
        if path.suffix.lower() == ".csv":
            return _read_csv(path)
    except (OSError, UnicodeDecodeError) as e:
        raise _UserError(f"Cannot read {path}: {e}") from None
    raise _UserError(f"{path}: expected a .csv or .npz file.")


def _fill_in_defaults(options: argparse.Namespace, defaults: _Defaults) -> None:
    options.optimiser = options.optimiser or defaults.optimiser
    options.epochs = options.epochs or defaults.epochs
    options.steps = options.steps or defaults.steps


def _train(
    model: NeuralVectorField,
    ts: np.ndarray,
    ys: np.ndarray,
    options: argparse.Namespace,
) -> TrainingRun:
    try:
        run = train_by_name(
            model,
            ts,
            ys,
            solver=options.solver,
            optimiser=options.optimiser,
            epochs=options.epochs,
            steps=options.steps,
            progress=not options.quiet,
            devices=(
                len(jax.devices()) if options.devices == "all" else options.devices
            ),
            prune=options.prune,
            noise=options.noise,
        )
    except ValueError as e:
        raise _UserError(str(e)) from None
    if run.result.stopped_early:
        print(f"warning: {run.result.message}", file=sys.stderr)
    return run


def _summary(run: TrainingRun, options: argparse.Namespace) -> str:
    refit = " (in the last refit after pruning)" if run.removed else ""
    return (
        f"{options.model} model, {len(run.result.losses)} epochs{refit} of "
        f"{options.optimiser} with "
        f"{options.solver} ({run.steps_summary()}), final loss "
        f"{run.final_loss:.3e}, {run.seconds:.1f} s on {run.result.devices} "
        "device(s)"
    )


def _report_verification(verification: Verification, uncertainty: Uncertainty) -> None:
    """Says in plain words whether the learned equations can be trusted."""
    figures = (
        f"trajectory error {verification.trajectory_error:.1e}, discretisation "
        f"bias {verification.discretisation_bias:.1e}, data resolution "
        f"{verification.resolution:.1e}, relative"
    )
    if verification.verified:
        print(f"Verified: the learned equations reproduce the data ({figures}).")
        if uncertainty.poorly_determined() or uncertainty.unidentifiable:
            print(
                "But reproducing the data does not make the coefficients named above "
                "right: the data do not determine them."
            )
    else:
        print(
            "NOT VERIFIED: the learned equations do NOT reproduce the data; do not "
            f"trust these coefficients. Why: {verification.message}. ({figures}.)"
        )


def _report_uncertainty(
    uncertainty: Uncertainty, learned: list[sympy.Expr], variables
) -> None:
    stderr = uncertainty.by_equation(uncertainty.stderr)
    print("Coefficients, +- one standard error:")
    for i, expression in enumerate(learned):
        for monomial, value in coefficients(expression, variables).items():
            error = stderr.get(f"x{i}", {}).get(monomial, math.nan)
            print(f"  x{i}': {monomial:>10}  {value:>14.8g} +- {error:.2e}")
    _report_determination(uncertainty)


def _report_pruning(run: TrainingRun) -> None:
    if run.removed:
        names = ", ".join(run.removed) if len(run.removed) <= 12 else "see --out"
        print(
            f"Pruned: removed {len(run.removed)} terms that the data do not show "
            "(within two standard errors of zero) and refitted the rest, which still "
            f"reproduce the data ({names})."
        )
    if run.rejected:
        print(
            f"Kept {len(run.rejected)} terms that look like zero: a refit without "
            "them (or without a group of terms that included them) missed the data, "
            "so some or all of them are needed: " + ", ".join(run.rejected) + "."
        )


def _pruning_json(run: TrainingRun) -> dict:
    return dict(removed=list(run.removed), rejected=list(run.rejected))


def _report_determination(uncertainty: Uncertainty) -> None:
    """Names the coefficients that the data do not pin down: a verified fit can still
    have them wrong."""
    for names in uncertainty.unidentifiable:
        print(
            "Not identifiable: the data do not determine the combination of "
            + ", ".join(names)
            + " (their standard errors are inf)."
        )
    poorly_determined = uncertainty.poorly_determined()
    if poorly_determined:
        print(
            "POORLY DETERMINED: the data do not fix these coefficients (one standard "
            "error above 10 % of the coefficient or of its equation's largest one); "
            "other values reproduce the data as well, so do not read them as the "
            "true ones: " + ", ".join(poorly_determined) + "."
        )
    zero = uncertainty.consistent_with_zero()
    if zero:
        print(
            "NOT SHOWN TO BE NONZERO: these coefficients are within two standard "
            "errors of zero, so the data do not show that their terms are there "
            "(spurious terms, or terms the data cannot resolve; --prune removes those "
            "that the data do without): " + ", ".join(zero) + "."
        )


def _uncertainty_json(uncertainty: Uncertainty) -> dict:
    return dict(
        stderr={
            equation: {m: (e if math.isfinite(e) else None) for m, e in rows.items()}
            for equation, rows in uncertainty.by_equation(uncertainty.stderr).items()
        },
        unidentifiable=[list(names) for names in uncertainty.unidentifiable],
        poorly_determined=list(uncertainty.poorly_determined()),
        consistent_with_zero=list(uncertainty.consistent_with_zero()),
    )


def _write_json(path: pathlib.Path | None, content: dict) -> None:
    if path is None:
        return
    try:
        path.write_text(json.dumps(content, indent=2) + "\n")
    except OSError as e:
        raise _UserError(f"Cannot write {path}: {e}") from None


def _reproduce(options: argparse.Namespace) -> bool:
    example = EXAMPLES[options.example]
    options.points = options.points or example.points
    if options.points < 2:
        raise _UserError("--points must be at least 2.")
    ts, ys = example.data(options.points)
    _fill_in_defaults(
        options,
        _Defaults(example.optimiser, example.epochs, example.steps_per_interval),
    )
    options.model = options.model or example.model_type
    run = _train(example.model(jr.key(options.seed), options.model), ts, ys, options)
    result = run.result
    assert isinstance(result.model, NeuralVectorField)
    assert isinstance(result.model.learned, (PiNet, PolynomialLibrary))
    learned = to_sympy(result.model.learned)
    comparison = example.compare(learned)
    print(
        f"{example.name}: {example.description}; {ys.shape[0]} trajectory(ies) x "
        f"{options.points} points; " + _summary(run, options)
    )
    print()
    print(
        equations_table(
            {"true": example.true_equations(), "learned": learned}, digits=6
        )
    )
    print()
    print("Fractional relative error |learned - true| / |true| of each coefficient:")
    for row in comparison:
        if row.relative_error is not None:
            print(
                f"  {row.equation}': {row.monomial:>8}  true {row.true:>12.6g}  "
                f"learned {row.learned:>14.8g}  error {row.relative_error:.3e}"
            )
    spurious = [abs(row.learned) for row in comparison if row.relative_error is None]
    if spurious:
        print(
            f"  largest coefficient of a monomial not in the truth: {max(spurious):.3e}"
        )
    _report_pruning(run)
    _report_determination(result.uncertainty)
    _report_verification(result.verification, result.uncertainty)
    _write_json(
        options.out,
        dict(
            example=example.name,
            model=options.model,
            solver=options.solver,
            steps_per_interval=options.steps,
            steps=result.steps.tolist(),
            optimiser=options.optimiser,
            points=options.points,
            epochs=len(result.losses),
            devices=result.devices,
            stopped_early=result.stopped_early,
            message=result.message,
            final_loss=None if math.isnan(run.final_loss) else run.final_loss,
            seconds=run.seconds,
            verified=result.verification.verified,
            verification=result.verification.as_dict(),
            **_uncertainty_json(result.uncertainty),
            **_pruning_json(run),
            equations={
                f"x{i}": dict(
                    true=str(true),
                    learned=str(guess),
                    coefficients={
                        row.monomial: row._asdict()
                        for row in comparison
                        if row.equation == f"x{i}"
                    },
                )
                for i, (true, guess) in enumerate(
                    zip(example.true_equations(), learned)
                )
            },
        ),
    )
    return result.verification.verified


def _fit(options: argparse.Namespace) -> bool:
    ts, ys = _read_data(options.data)
    size = np.shape(ys)[-1] if np.ndim(ys) >= 2 else 0
    if size < 1:
        raise _UserError(
            f"{options.data}: `ys` must have shape (T, n) or (B, T, n), got "
            f"{np.shape(ys)}."
        )
    width = options.width or math.comb(size + options.degree, options.degree)
    options.model = options.model or "pinet"
    model = NeuralVectorField(
        learned_from_name(
            options.model, size, options.degree, width, key=jr.key(options.seed)
        )
    )
    _fill_in_defaults(options, _FIT_DEFAULTS)
    run = _train(model, ts, ys, options)
    result = run.result
    assert isinstance(result.model, NeuralVectorField)
    assert isinstance(result.model.learned, (PiNet, PolynomialLibrary))
    variables = sympy.symbols(f"x0:{size}")
    learned = to_sympy(result.model.learned, variables)
    print(_summary(run, options))
    print(equations_table({"learned": learned}, variables, digits=6))
    _report_pruning(run)
    _report_uncertainty(result.uncertainty, learned, variables)
    _report_verification(result.verification, result.uncertainty)
    _write_json(
        options.out,
        dict(
            model=options.model,
            equations={
                str(v): coefficients(e, variables) for v, e in zip(variables, learned)
            },
            **_uncertainty_json(result.uncertainty),
            **_pruning_json(run),
            verified=result.verification.verified,
            verification=result.verification.as_dict(),
            steps=result.steps.tolist(),
            epochs=len(result.losses),
            devices=result.devices,
            final_loss=None if math.isnan(run.final_loss) else run.final_loss,
        ),
    )
    return result.verification.verified


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    jax.config.update("jax_enable_x64", True)
    options = _parser().parse_args(argv)
    try:
        verified = (_reproduce if options.command == "reproduce" else _fit)(options)
    except _UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0 if verified else UNVERIFIED_STATUS
