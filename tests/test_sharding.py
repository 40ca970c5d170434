"""Data-parallel `fit`: one subprocess with four forced host devices runs every fit
(`tests/data_parallel_checks.py`, to pay for starting JAX and compiling once; about
80 s of CPU time, hence `slow`); the tests compare what it saved."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from diffrax_implicit_node._cli import main
from jax.sharding import PartitionSpec


CHECKS = pathlib.Path(__file__).with_name("data_parallel_checks.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("data_parallel") / "runs.npz"
    root = str(CHECKS.parent.parent)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    )
    completed = subprocess.run(
        [sys.executable, str(CHECKS), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with np.load(out) as saved:
        return dict(saved)


def assert_same_run(runs, first: str, second: str) -> None:
    # Sums over devices are added in another order: equal up to rounding.
    np.testing.assert_allclose(
        runs[f"{first}_losses"], runs[f"{second}_losses"], rtol=1e-10
    )
    params, other = runs[f"{first}_params"], runs[f"{second}_params"]
    assert np.max(np.abs(params - other)) <= 1e-8 * np.max(np.abs(params))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lm", "adam", "minibatch"])
def test_four_devices_give_the_one_device_answer(runs, name):
    # 14 windows: padded to 16 on 4 devices, not at all on 1; minibatches of 5 are
    # padded to 8. Padding that counted would change the losses.
    assert runs[f"{name}_1_devices"] == 1 and runs[f"{name}_4_devices"] == 4
    assert_same_run(runs, f"{name}_1", f"{name}_4")
    # The runs do train (a comparison of two runs that did nothing could not fail).
    losses = runs[f"{name}_1_losses"]
    assert losses[-1] < 0.95 * losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lm", "adam"])
def test_statistics_leave_out_the_padding(runs, name):
    # The data's resolution (root mean square of the residuals), the discretisation
    # bias and the standard errors, all over the windows: padding would change them.
    np.testing.assert_allclose(
        runs[f"{name}_1_statistics"], runs[f"{name}_4_statistics"], rtol=1e-8
    )


@pytest.mark.slow
def test_least_squares_converges_to_the_data(runs):
    assert runs["lm_4_losses"][-1] < 1e-2 * runs["lm_4_losses"][0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lm", "adam"])
def test_checkpoint_resumes_on_another_device_count(runs, name):
    # LM: 2 epochs on 4 devices, the rest on 1; Adam: 2 on 1, the rest on 4.
    assert_same_run(runs, f"{name}_resumed", f"{name}_1")


@pytest.mark.slow
def test_windows_are_split_across_devices_and_padding_weighs_zero(runs):
    assert str(runs["windows_spec"]) == str(PartitionSpec(("windows",)))
    assert runs["windows_devices"] == 4
    np.testing.assert_array_equal(runs["windows_shard_shapes"], [[4, 2]] * 4)
    np.testing.assert_array_equal(runs["windows_weight"], [1.0] * 14 + [0.0] * 2)
    # Copies of a real window, so that their solves succeed as that one's does.
    np.testing.assert_array_equal(runs["windows_pad_y0"], np.zeros((2, 2)))


@pytest.mark.slow
def test_command_line_on_four_devices(runs):
    assert "on 4 device(s)" in str(runs["cli_4_printed"])
    assert "on 1 device(s)" in str(runs["cli_1_printed"])
    assert runs["cli_4_json_devices"] == 4 and runs["cli_1_json_devices"] == 1
    one, four = runs["cli_1_coefficients"], runs["cli_4_coefficients"]
    assert np.max(np.abs(one - four)) <= 1e-8 * np.max(np.abs(one))


def test_command_line_device_errors(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text("t,x0\n0,1\n1,0.5\n2,0.25\n")
    assert main(["fit", str(data), "--devices", "1000", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"error: asked for 1000 devices, but \d+ CPU device\(s\) are visible\.\n", err
    )
    assert err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", str(data), "--devices", "four"])
    assert exit_info.value.code == 2
    assert "argument --devices: not an integer: 'four'" in capsys.readouterr().err
