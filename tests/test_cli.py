import json
import subprocess
import sys

import diffrax_implicit_node as din
import numpy as np
import pytest
import sympy
from diffrax_implicit_node._cli import main, UNVERIFIED_STATUS


def write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def decay_rows(trajectories=(0, 1)):
    # x0' = -2 x0 + 1, from x0(0) = 0 and x0(0) = 1.
    ts = np.linspace(0.0, 2.0, 21)
    rows = []
    for trajectory, start in zip(trajectories, (0.0, 1.0)):
        xs = 0.5 + (start - 0.5) * np.exp(-2 * ts)
        rows += [(trajectory, t, x) for t, x in zip(ts, xs)]
    return rows


def test_fit_csv_with_trajectories(tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", ["trajectory", "t", "x0"], decay_rows())
    out = tmp_path / "out.json"
    status = main(
        ["fit", str(data), "--degree", "2", "--epochs", "60", "--quiet"]
        + ["--out", str(out)]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "x0' |" in printed and "Verified: the learned equations reproduce" in printed
    # The x0**2 term of the degree-2 model is not in the data: pruned, and the
    # refitted equations verified.
    assert "Pruned: removed 1 terms" in printed
    result = json.loads(out.read_text())
    assert result["removed"] == ["x0': x0**2"] and result["rejected"] == []
    learned = result["equations"]
    assert learned.keys() == {"x0"} and learned["x0"].keys() == {"x0", "1"}
    assert learned["x0"]["x0"] == pytest.approx(-2.0, rel=1e-3)
    assert learned["x0"]["1"] == pytest.approx(1.0, rel=1e-3)
    assert result["verified"] is True and result["unidentifiable"] == []
    assert result["stderr"]["x0"].keys() == {"x0", "1"}
    # Noise-free data: the standard errors are those of the resolution the fit was
    # verified at (a relative 1e-4), not of the tiny residuals (about 1e-9 here).
    assert 1e-6 < result["stderr"]["x0"]["x0"] < 0.2
    assert result["poorly_determined"] == [] and result["consistent_with_zero"] == []


@pytest.mark.slow
def test_fit_npz(tmp_path, capsys):
    rows = np.array(decay_rows())
    path = tmp_path / "data.npz"
    np.savez(path, ts=rows[:21, 1], ys=rows[:, 2].reshape(2, 21, 1))
    arguments = ["fit", str(path), "--degree", "1", "--epochs", "2", "--quiet"]
    status = main(arguments + ["--optimiser", "lbfgs", "--steps", "3"])
    printed = capsys.readouterr().out
    assert "2 epochs of lbfgs with radau5 (3 step(s) per gap)" in printed
    # Two epochs are far from converged: said so, in the exit status too.
    assert status == UNVERIFIED_STATUS and "NOT VERIFIED" in printed


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (["t", "y0"], [(0, 1), (1, 2)], "expected state columns x0, x1, ..."),
        (["t", "x0", "x2"], [(0, 1, 2), (1, 2, 3)], "unexpected: x2"),
        (["time", "x0"], [(0, 1), (1, 2)], "no column 't'"),
        (["t", "x0"], [(0, 1), (1, "nan")], "non-finite"),
        (["t", "x0"], [(0, 1), (1, "abc")], "not a number: 'abc'"),
        (["t", "x0"], [(0, 1), (0, 2)], "repeated times"),
        (["t", "x0"], [(1, 1), (0, 2)], "decreasing"),
        (["t", "x0"], [(0, 1), (1,)], "line 3: 1 values for 2 columns"),
        (["trajectory", "t", "x0"], decay_rows()[:-1], "different numbers of rows"),
    ],
)
def test_fit_bad_csv(tmp_path, capsys, header, rows, message):
    data = write_csv(tmp_path / "data.csv", header, rows)
    assert main(["fit", str(data), "--epochs", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_fit_bad_files(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "missing.csv")]) == 1
    assert "Cannot read" in capsys.readouterr().err
    (tmp_path / "data.txt").write_text("t,x0\n")
    assert main(["fit", str(tmp_path / "data.txt")]) == 1
    assert "expected a .csv or .npz" in capsys.readouterr().err
    np.savez(tmp_path / "data.npz", times=np.arange(3.0))
    assert main(["fit", str(tmp_path / "data.npz")]) == 1
    assert "no array ts or ys" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", str(tmp_path / "data.npz"), "--solver", "euler"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    for noise in ("-0.1", "nan", "abc"):
        with pytest.raises(SystemExit):
            main(["fit", str(tmp_path / "data.npz"), "--noise", noise])
        assert "argument --noise" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_writes_json(tmp_path, capsys):
    out = tmp_path / "linear.json"
    arguments = ["reproduce", "linear", "--points", "20", "--epochs", "3"]
    status = main(arguments + ["--quiet", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "Fractional relative error" in printed and "3000.0 - 1000.0*x0" in printed
    result = json.loads(out.read_text())
    # Three epochs are far from converged: the residuals are far above 5 % of the
    # data, which is no resolution to verify at.
    assert status == UNVERIFIED_STATUS and result["verified"] is False
    assert "does not fit the data" in result["verification"]["message"]
    assert result["removed"] == []  # An unverified fit is not pruned.
    assert result["epochs"] == 3 and result["solver"] == "radau5"
    # The example's own defaults.
    assert result["optimiser"] == "lbfgs" and result["steps_per_interval"] == "auto"
    equation = result["equations"]["x0"]
    coefficients = equation["coefficients"]
    assert coefficients.keys() == {"x0", "1"}
    assert coefficients["x0"]["true"] == -1000.0 and coefficients["1"]["true"] == 3000.0
    # The learned coefficients are those of the learned equation, and each error is
    # theirs.
    (x0,) = sympy.symbols("x0:1")
    learned = din.coefficients(sympy.sympify(equation["learned"]), (x0,))
    for monomial, row in coefficients.items():
        assert row["learned"] == pytest.approx(learned.get(monomial, 0.0), rel=1e-12)
        assert row["relative_error"] == pytest.approx(
            abs(row["learned"] - row["true"]) / abs(row["true"]), rel=1e-12
        )


def test_reproduce_with_a_polynomial_library(tmp_path, capsys):
    out = tmp_path / "linear.json"
    arguments = ["reproduce", "linear", "--points", "20", "--epochs", "2"]
    arguments += ["--model", "polynomial", "--optimiser", "levenberg-marquardt"]
    # Two steps from zero are far from converged, and the command says so.
    assert main(arguments + ["--quiet", "--out", str(out)]) == UNVERIFIED_STATUS
    assert "polynomial model" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["model"] == "polynomial" and result["epochs"] == 2
    # From zero (relative error 1), Levenberg-Marquardt moves towards the true rate.
    assert result["equations"]["x0"]["coefficients"]["x0"]["relative_error"] < 1


def test_module_entry_point():
    completed = subprocess.run(
        [sys.executable, "-m", "diffrax_implicit_node", "reproduce", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--points" in completed.stdout


def stiff_rows():
    # x0' = -40 x0 + 40 from 0 and 2, every 0.1: the transient is over within the
    # first gap, which one solver step cannot follow.
    ts = np.linspace(0.0, 1.0, 11)
    return [
        (trajectory, t, 1 + (start - 1) * np.exp(-40 * t))
        for trajectory, start in enumerate((0.0, 2.0))
        for t in ts
    ]


@pytest.mark.slow
def test_fit_stiff_data_with_the_defaults_or_says_it_cannot(tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", ["trajectory", "t", "x0"], stiff_rows())
    out = tmp_path / "out.json"
    arguments = ["fit", str(data), "--degree", "1", "--quiet", "--out", str(out)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "Verified" in printed and "+-" in printed and "steps per gap" in printed
    result = json.loads(out.read_text())
    assert result["verified"] is True
    assert result["equations"]["x0"]["x0"] == pytest.approx(-40.0, rel=1e-2)
    assert result["equations"]["x0"]["1"] == pytest.approx(40.0, rel=1e-2)
    assert 0 < result["stderr"]["x0"]["x0"] < 1.0
    assert max(result["steps"][0]) > 1
    # One step per gap: a biased fit, and the command says so.
    assert main(arguments + ["--steps", "1"]) == UNVERIFIED_STATUS
    printed = capsys.readouterr().out
    assert "NOT VERIFIED" in printed and "twice the steps" in printed
    result = json.loads(out.read_text())
    assert result["verified"] is False
    assert result["verification"]["discretisation_bias"] > 1e-4
