import json
import subprocess
import sys

import numpy as np
import pytest
from diffrax_implicit_node._cli import main


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
        ["fit", str(data), "--degree", "1", "--epochs", "60", "--quiet"]
        + ["--out", str(out), "--prune", "1e-6"]
    )
    assert status == 0
    assert "x0' |" in capsys.readouterr().out
    learned = json.loads(out.read_text())
    assert learned.keys() == {"x0"} and learned["x0"].keys() == {"x0", "1"}
    assert learned["x0"]["x0"] == pytest.approx(-2.0, rel=1e-3)
    assert learned["x0"]["1"] == pytest.approx(1.0, rel=1e-3)


def test_fit_npz(tmp_path, capsys):
    rows = np.array(decay_rows())
    path = tmp_path / "data.npz"
    np.savez(path, ts=rows[:21, 1], ys=rows[:, 2].reshape(2, 21, 1))
    arguments = ["fit", str(path), "--degree", "1", "--epochs", "2", "--quiet"]
    assert main(arguments + ["--optimiser", "lbfgs", "--steps", "3"]) == 0
    assert "2 epochs of lbfgs with radau5 (3 step(s) per gap)" in (
        capsys.readouterr().out
    )


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


def test_reproduce_writes_json(tmp_path, capsys):
    out = tmp_path / "linear.json"
    arguments = ["reproduce", "linear", "--points", "20", "--epochs", "3"]
    assert main(arguments + ["--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Fractional relative error" in printed and "3000.0 - 1000.0*x0" in printed
    result = json.loads(out.read_text())
    assert result["epochs"] == 3 and result["solver"] == "radau5"
    # The example's own defaults.
    assert result["optimiser"] == "lbfgs" and result["steps_per_interval"] == 1
    coefficients = result["equations"]["x0"]["coefficients"]
    assert coefficients["x0"]["true"] == -1000.0
    assert coefficients["1"]["relative_error"] >= 0


def test_reproduce_with_a_polynomial_library(tmp_path, capsys):
    out = tmp_path / "linear.json"
    arguments = ["reproduce", "linear", "--points", "20", "--epochs", "2"]
    arguments += ["--model", "polynomial", "--optimiser", "levenberg-marquardt"]
    assert main(arguments + ["--quiet", "--out", str(out)]) == 0
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
