import dataclasses
import warnings
from typing import Any

import diffrax
import diffrax_implicit_node as din
import diffrax_implicit_node._optimise as din_optimise
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import optimistix as optx
import pytest
import sympy
from helpers import without_runtime_type_checks


@pytest.mark.slow
def test_recovers_stiff_linear_system_with_radau5():
    # y' = -1000 y + 3000 - 2000 exp(-t), the forcing known; one step per gap, so
    # h λ = -43: far outside the stability region of any explicit method.
    example = din.EXAMPLES["linear"]
    ts, ys = example.data(94)
    result = din.fit(
        example.model(jr.key(0)),
        ts,
        ys,
        solver=din.solver_from_name("radau5"),
        optimiser=optax.lbfgs(),
        epochs=300,
        steps_per_interval=1,
        progress=False,
    )
    assert not result.stopped_early
    assert result.losses.shape == (300,) and result.losses[-1] < 1e-3 * result.losses[0]
    comparison = example.compare(din.to_sympy(result.model.learned))
    assert {row.monomial for row in comparison} == {"x0", "1"}
    for row in comparison:
        assert row.relative_error is not None and row.relative_error < 0.01


class Decay(eqx.Module):
    rate: jax.Array

    def __call__(self, t, y, args):
        return -self.rate * y + jnp.log(self.rate)


def decay_data():
    ts = jnp.linspace(0.0, 1.0, 11)
    ys = jnp.stack([jnp.exp(-2 * ts), 2 * jnp.exp(-2 * ts)])[..., None]
    return ts, ys


@pytest.mark.slow
def test_checkpoint_resume_is_bit_for_bit(tmp_path):
    ts, ys = decay_data()
    options: dict[str, Any] = dict(
        solver=din.solver_from_name("radau3"),
        optimiser=optax.adam(1e-2),
        batch_size=7,
        key=jr.key(1),
        progress=False,
    )
    model = Decay(jnp.array(3.0))
    straight = din.fit(model, ts, ys, epochs=6, **options)
    path = tmp_path / "run.eqx"
    first = din.fit(
        model, ts, ys, epochs=3, checkpoint=path, checkpoint_every=2, **options
    )
    assert len(first.losses) == 3
    resumed = din.fit(model, ts, ys, epochs=6, checkpoint=path, **options)
    np.testing.assert_array_equal(resumed.losses, straight.losses)
    assert resumed.model.rate == straight.model.rate
    for a, b in zip(
        jax.tree.leaves(resumed.opt_state), jax.tree.leaves(straight.opt_state)
    ):
        np.testing.assert_array_equal(a, b)
    # A different key gives different minibatches, hence a different run.
    other = din.fit(model, ts, ys, epochs=6, **{**options, "key": jr.key(2)})
    assert other.model.rate != straight.model.rate
    with pytest.raises(ValueError, match="Cannot resume"):
        din.fit(
            din.PiNet(1, 1, 1, 2, key=jr.key(0)),
            ts,
            ys,
            epochs=6,
            checkpoint=path,
            **options,
        )


def test_stops_on_non_finite_loss_and_keeps_last_good_parameters():
    ts, ys = decay_data()
    # Moves the rate down by 1 per epoch: 2.5, 1.5, 0.5 are fine, -0.5 gives log < 0.
    downhill = optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (
            jax.tree.map(lambda u: -jnp.ones_like(u), updates),
            state,
        ),
    )
    with pytest.warns(RuntimeWarning, match="not finite"):
        result = din.fit(
            Decay(jnp.array(2.5)),
            ts,
            ys,
            solver=din.solver_from_name("backward-euler"),
            optimiser=downhill,
            epochs=10,
            progress=False,
        )
    assert result.stopped_early and "epoch 3" in result.message
    assert len(result.losses) == 3 and np.all(np.isfinite(result.losses))
    assert result.model.rate == 0.5


def test_interval_predictions_match_diffeqsolve():
    solver = din.solver_from_name("radau5", rtol=1e-12, atol=1e-12)

    def field(t, y, args):
        return -args * y

    y1, ok = din.interval_predictions(
        field,
        jnp.array([0.0, 1.0]),
        jnp.array([0.5, 3.0]),
        jnp.ones((2, 1)),
        solver=solver,
        steps_per_interval=4,
        args=2.0,
    )
    assert ok.all()
    reference = diffrax.diffeqsolve(
        diffrax.ODETerm(field), solver, 1.0, 3.0, 0.5, jnp.ones(1), args=2.0
    ).ys
    assert reference is not None
    np.testing.assert_allclose(y1[1], reference[0], rtol=1e-14)
    np.testing.assert_allclose(y1[0], np.exp(-1.0), rtol=1e-4)


@pytest.mark.slow
def test_interval_predictions_gradients_match_checkpointed_diffeqsolve():
    # `interval_predictions` differentiates its fixed steps directly; the gradient
    # must be the one of Diffrax's default, checkpointed adjoint.
    solver = din.solver_from_name("radau5", rtol=1e-12, atol=1e-12)

    def field(t, y, args):
        return -args[0] * y + args[1] * y**2

    def ours(args, y0):
        y1, _ = din.interval_predictions(
            field,
            jnp.array([1.0]),
            jnp.array([3.0]),
            y0[None],
            solver=solver,
            steps_per_interval=3,
            args=args,
        )
        return jnp.sum(y1**2)

    def checkpointed(args, y0):
        ys = diffrax.diffeqsolve(
            diffrax.ODETerm(field), solver, 1.0, 3.0, 2 / 3, y0, args=args
        ).ys
        assert ys is not None
        return jnp.sum(ys[0] ** 2)

    inputs = (jnp.array([2.0, 0.5]), jnp.array([1.0, 0.3]))
    expected = jax.grad(checkpointed, argnums=(0, 1))(*inputs)
    for got, want in zip(jax.grad(ours, argnums=(0, 1))(*inputs), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize(
    "ts, ys, match",
    [
        (
            [0.0, 1.0, 2.0],
            [[1.0], [np.nan], [0.0]],
            r"`ys` contains non-finite .* \(1, 0\)",
        ),
        ([0.0, np.inf, 2.0], [[1.0], [1.0], [0.0]], "`ts` contains non-finite"),
        ([0.0, 1.0, 1.0], [[1.0], [1.0], [0.0]], "repeated times at indices 1 and 2"),
        ([0.0, 2.0, 1.0], [[1.0], [1.0], [0.0]], "decreasing"),
        ([0.0, 1.0], [[1.0], [1.0], [0.0]], "does not match"),
        ([0.0, 1.0, 2.0], [1.0, 1.0, 0.0], r"shape \(T, n\) or \(B, T, n\)"),
        ([0.0], [[1.0]], "at least 2 observations"),
        (
            [[0.0, 1.0, 2.0], [0.0, 2.0, 2.0]],
            [[[1.0], [1.0], [0.0]]] * 2,
            "repeated times at trajectory 1, indices 1 and 2",
        ),
    ],
)
def test_bad_data(ts, ys, match):
    with without_runtime_type_checks(), pytest.raises(ValueError, match=match):
        din.fit(
            Decay(jnp.array(1.0)),
            np.asarray(ts),
            np.asarray(ys),
            solver=din.RK4(),
            optimiser=optax.adam(1e-3),
            epochs=1,
            progress=False,
        )


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(batch_size=3), "need a `key`"),
        (dict(batch_size=100, key=jr.key(0)), "between 1 and the number of intervals"),
        (dict(steps_per_interval=0), "steps_per_interval"),
        (dict(epochs=-1), "epochs"),
        (dict(scale=[1.0, 2.0]), "scale"),
        (
            dict(optimiser=optx.LevenbergMarquardt(1e-8, 1e-8), batch_size=3),
            "leave out `batch_size`",
        ),
    ],
)
def test_bad_options(options, match):
    ts, ys = decay_data()
    arguments: dict[str, Any] = dict(
        solver=din.RK4(), optimiser=optax.adam(1e-3), epochs=1, progress=False
    )
    with without_runtime_type_checks(), pytest.raises(ValueError, match=match):
        din.fit(Decay(jnp.array(1.0)), ts, ys, **(arguments | options))


def test_interrupt_keeps_best_model_and_resumes_exactly(tmp_path, monkeypatch):
    ts, ys = decay_data()
    options: dict[str, Any] = dict(
        solver=din.solver_from_name("radau3"),
        optimiser=optax.adam(1e-1),
        epochs=6,
        progress=False,
    )
    model = Decay(jnp.array(3.0))
    straight = din.fit(model, ts, ys, **options)

    train_step = din_optimise._train_step
    calls = 0

    def interrupted_in_fifth_epoch(*args):
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return train_step(*args)

    monkeypatch.setattr(din_optimise, "_train_step", interrupted_in_fifth_epoch)
    path = tmp_path / "run.eqx"
    with pytest.warns(RuntimeWarning, match="interrupted in epoch 4"):
        stopped = din.fit(model, ts, ys, checkpoint=path, **options)
    assert stopped.stopped_early
    np.testing.assert_array_equal(stopped.losses, straight.losses[:4])
    # The model with the lowest loss so far: the loss of epoch k is evaluated at the
    # parameters after k updates.
    best_epoch = int(np.argmin(straight.losses[:4]))
    best = din.fit(model, ts, ys, **{**options, "epochs": best_epoch})
    assert stopped.model.rate == best.model.rate
    monkeypatch.setattr(din_optimise, "_train_step", train_step)
    resumed = din.fit(model, ts, ys, checkpoint=path, **options)
    np.testing.assert_array_equal(resumed.losses, straight.losses)
    assert resumed.model.rate == straight.model.rate


@pytest.mark.slow
def test_least_squares_recovers_kaps_from_its_transients():
    # Kaps' problem from four starts, three of them off the slow manifold: only the
    # first few milliseconds (rate 1000) show the stiff coefficients apart from their
    # difference, so the loss is ill conditioned. Levenberg--Marquardt follows it.
    example = din.EXAMPLES["nonlinear2d"]
    ts = np.array([0.0, 2e-4, 5e-4, 1e-3, 2e-3, 4e-3, 1e-2, 0.1, 0.5, 1.0, 2.0])
    ts, ys = example.data(ts)
    result = din.fit(
        example.model(jr.key(0)),
        ts,
        ys,
        solver=din.solver_from_name("radau5"),
        optimiser=din.optimiser_from_name("levenberg-marquardt"),
        epochs=100,
        steps_per_interval=2,
        progress=False,
    )
    # Converged before the last epoch, which is not an early stop.
    assert not result.stopped_early and len(result.losses) < 100
    assert np.all(np.diff(result.losses) <= 0)  # Accepted steps only.
    for row in example.compare(din.to_sympy(result.model.learned)):
        if row.relative_error is None:  # A monomial not in the truth: nearly absent.
            assert abs(row.learned) < 2e-2
        else:
            assert row.relative_error < 2e-3


class Exponential(eqx.Module):
    rate: jax.Array

    def __call__(self, t, y, args):
        return -self.rate * y


def exponential_residuals(rate, ts, ys, solver):
    predictions, _ = din.interval_predictions(
        Exponential(rate),
        jnp.tile(ts[:-1], 2),
        jnp.tile(ts[1:], 2),
        ys[:, :-1].reshape(-1, 1),
        solver=solver,
    )
    return (predictions - ys[:, 1:].reshape(-1, 1)).ravel()


@pytest.mark.slow
def test_least_squares_steps_are_optimistix_steps(tmp_path):
    ts, ys = decay_data()
    solver = din.solver_from_name("radau3")
    least_squares = optx.LevenbergMarquardt(rtol=1e-10, atol=1e-12)
    options: dict[str, Any] = dict(
        solver=solver, optimiser=least_squares, steps_per_interval=1, progress=False
    )
    model = Exponential(jnp.array(3.0))  # The data decays with rate 2.
    result = din.fit(model, ts, ys, epochs=50, **options)
    reference = optx.least_squares(
        lambda rate, _: exponential_residuals(rate, ts, ys, solver),
        least_squares,
        jnp.array(3.0),
        max_steps=50,
    )
    assert len(result.losses) == int(reference.stats["num_steps"])
    np.testing.assert_allclose(result.model.rate, reference.value, rtol=1e-13)
    np.testing.assert_allclose(result.model.rate, 2.0, rtol=1e-3)
    # Resuming a least-squares run continues it exactly.
    path = tmp_path / "run.eqx"
    first = din.fit(model, ts, ys, epochs=2, checkpoint=path, **options)
    assert len(first.losses) == 2
    resumed = din.fit(model, ts, ys, epochs=50, checkpoint=path, **options)
    np.testing.assert_array_equal(resumed.losses, result.losses)
    assert resumed.model.rate == result.model.rate


def test_least_squares_stops_on_non_finite_start():
    ts, ys = decay_data()
    with pytest.warns(RuntimeWarning, match="epoch 0: the loss is not finite"):
        result = din.fit(
            Decay(jnp.array(-1.0)),  # log(-1): NaN
            ts,
            ys,
            solver=din.solver_from_name("backward-euler"),
            optimiser=optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8),
            epochs=5,
            progress=False,
        )
    assert result.stopped_early and len(result.losses) == 0
    assert result.model.rate == -1.0


def test_example_checks_its_settings_and_observation_times():
    example = din.EXAMPLES["nonlinear2d"]
    with pytest.raises(ValueError, match="unknown optimiser 'adam'"):
        dataclasses.replace(example, optimiser="adam")
    with pytest.raises(ValueError, match="`steps_per_interval` must be at least 1"):
        dataclasses.replace(example, steps_per_interval=0)
    with pytest.raises(ValueError, match="increases strictly from 0"):
        example.data(np.array([0.0, 0.2, 0.1]))
    with pytest.raises(ValueError, match="Unknown optimiser"):
        din.optimiser_from_name("adam")


class Relaxation(eqx.Module):
    rate: jax.Array
    level: jax.Array

    def __call__(self, t, y, args):
        return -self.rate * y + self.level


def stiff_relaxation_data():
    # y' = -40 y + 40 from 0 and 2, observed every 0.1: the transient (h λ = -4) is
    # over within the first gap, and one RadauIIA5 step cannot follow it (its
    # stability function stays above 0.025 > exp(-4) for every h λ < 0).
    ts = np.linspace(0.0, 1.0, 11)
    ys = np.stack([1 + (start - 1) * np.exp(-40 * ts) for start in (0.0, 2.0)])
    return ts, ys[..., None]


@pytest.mark.slow
def test_auto_steps_recover_stiff_data_that_one_step_per_gap_biases():
    ts, ys = stiff_relaxation_data()
    options: dict[str, Any] = dict(
        solver=din.solver_from_name("radau5"),
        optimiser=din.optimiser_from_name("levenberg-marquardt"),
        epochs=200,
        progress=False,
    )
    model = Relaxation(jnp.array(1.0), jnp.array(0.0))
    with pytest.warns(din.UnverifiedFitWarning, match="twice the steps"):
        one_step = din.fit(model, ts, ys, steps_per_interval=1, **options)
    # A biased fit: its coefficients are off by far more than 1 %.
    assert abs(float(one_step.model.rate) - 40) / 40 > 0.1
    assert not one_step.verification.verified
    assert one_step.verification.discretisation_bias > 1e-4
    auto = din.fit(model, ts, ys, **options)
    assert auto.verification.verified, auto.verification.message
    for value in (auto.model.rate, auto.model.level):
        assert abs(float(value) - 40) / 40 < 1e-2
    # The gaps with the transient need far more steps than the others.
    assert np.all(auto.steps[:, 0] >= 4 * auto.steps[:, -1])


@pytest.mark.slow
def test_standard_errors_match_refits_of_noisy_copies():
    # y' = -2 y + 1; the standard errors of one fit against the spread of the
    # estimates over refits of independently noisy copies of the data.
    ts = np.linspace(0.0, 2.0, 21)
    clean = np.stack([0.5 + (start - 0.5) * np.exp(-2 * ts) for start in (0.0, 1.0)])
    noise = 2e-3
    options: dict[str, Any] = dict(
        solver=din.solver_from_name("radau5"),
        optimiser=din.optimiser_from_name("levenberg-marquardt"),
        epochs=30,
        steps_per_interval=1,
        progress=False,
    )
    model = Relaxation(jnp.array(1.0), jnp.array(0.0))
    estimates, stderrs = [], []
    for key in jr.split(jr.key(0), 40):
        ys = clean + noise * np.asarray(jr.normal(key, clean.shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", din.UnverifiedFitWarning)
            result = din.fit(model, ts, ys[..., None], **options)
        estimates.append([float(result.model.rate), float(result.model.level)])
        stderrs.append(result.uncertainty.stderr)
        assert result.uncertainty.names == ("p[0]", "p[1]")
        assert result.uncertainty.unidentifiable == ()
    spread = np.std(np.array(estimates), axis=0, ddof=1)
    np.testing.assert_allclose(np.mean(stderrs, axis=0), spread, rtol=0.3)


def least_squares_fit(model, ts, ys, **options):
    """`fit` with Radau IIA 5 and Levenberg-Marquardt, as the command line trains."""
    return din.fit(
        model,
        ts,
        ys,
        solver=din.solver_from_name("radau5"),
        optimiser=din.optimiser_from_name("levenberg-marquardt"),
        progress=False,
        **options,
    )


@pytest.mark.parametrize(
    "learned",
    [din.PiNet(1, 1, 2, 3, key=jr.key(0)), din.PolynomialLibrary(1, 2)],
    ids=["pinet", "library"],
)
def test_unidentifiable_coefficients_are_named(learned):
    # At rest at y = 1, the data pin down f(1) = 0 only: of the coefficients of 1,
    # x0 and x0**2 just their sum. (A PiNet's are those of the library it equals.)
    ts = np.linspace(0.0, 1.0, 6)
    ys = np.ones((6, 1))
    model = din.NeuralVectorField(learned)
    result = least_squares_fit(model, ts, ys, epochs=3, steps_per_interval=1)
    uncertainty = result.uncertainty
    assert uncertainty.names == ("x0': 1", "x0': x0", "x0': x0**2")
    assert len(uncertainty.unidentifiable) == 2
    assert set().union(*uncertainty.unidentifiable) == set(uncertainty.names)
    assert np.all(np.isinf(uncertainty.stderr))


def test_poorly_determined_and_consistent_with_zero():
    uncertainty = din.Uncertainty(
        names=("x0': a", "x0': b", "x0': c", "x0': d", "x0': e", "x1': f", "x1': g"),
        values=np.array([1.0, 1.0, 0.01, -5.0, 3.0, 0.5, 2.0]),
        stderr=np.array([0.05, 0.3, 0.02, np.inf, 1e-3, 1.0, 0.01]),
        singular_values=np.ones(7),
        unidentifiable=(("x0': d",),),
        noise=1e-4,
    )
    # b: 30 % of its value; d: not determined at all; f: within two standard errors
    # of zero, but by more than a tenth of its equation's largest term (g). c is a
    # small term near zero; a, e and g are determined to 5 % and better.
    assert uncertainty.poorly_determined() == ("x0': b", "x0': d", "x1': f")
    assert uncertainty.consistent_with_zero() == ("x0': c", "x1': f")


def two_species_data():
    # x0' = -2 x0 + x1, x1' = -x1, from three starts: 3 of the 12 coefficients of a
    # degree-2 library.
    ts = np.linspace(0.0, 2.0, 21)
    trajectories = []
    for a, b in [(1.0, 1.0), (0.0, 2.0), (2.0, 0.5)]:
        x1 = b * np.exp(-ts)
        x0 = (a - b) * np.exp(-2 * ts) + b * np.exp(-ts)
        trajectories.append(np.stack([x0, x1], axis=-1))
    return ts, np.stack(trajectories)


@pytest.mark.slow
def test_sparsify_removes_exactly_the_absent_terms():
    ts, ys = two_species_data()

    def train(model):
        return least_squares_fit(model, ts, ys, epochs=100, steps_per_interval=4)

    full = train(din.NeuralVectorField(din.PolynomialLibrary(2, 2)))
    assert full.verification.verified
    true_terms = {"x0': x0": -2.0, "x0': x1": 1.0, "x1': x1": -1.0}
    sparse = din.sparsify(full, train)
    assert set(sparse.removed) == set(full.uncertainty.names) - set(true_terms)
    assert sparse.rejected == ()
    assert sparse.result.verification.verified
    assert sparse.result.uncertainty.names == tuple(sorted(true_terms))
    for name, value in zip(
        sparse.result.uncertainty.names, sparse.result.uncertainty.values
    ):
        assert value == pytest.approx(true_terms[name], rel=1e-4)
    library = sparse.result.model.learned
    coefficients = np.asarray(library.coefficients)
    assert np.count_nonzero(coefficients) == 3
    assert len(din.coefficients(din.to_sympy(library)[0], sympy.symbols("x0:2"))) == 2

    # A refit that never reproduces the data: every removal is undone, halving the
    # candidates, within `max_refits` refits.
    unverified = dataclasses.replace(full.verification, verified=False)
    refits = []

    def failing_refit(model):
        refits.append(model)
        return eqx.tree_at(lambda r: r.verification, full, unverified)

    kept = din.sparsify(full, failing_refit, max_refits=3)
    assert kept.result is full and kept.removed == ()
    assert len(refits) == 3
    assert set(kept.rejected) == set(full.uncertainty.consistent_with_zero())
    # An unverified fit is returned as it is, without a refit.
    unverified_fit = eqx.tree_at(lambda r: r.verification, full, unverified)
    assert din.sparsify(unverified_fit, failing_refit).result is unverified_fit
    assert len(refits) == 3


def test_large_residuals_are_not_a_resolution_to_verify_at():
    # Noise of 0.5 around 1, and the model x' = 0: the residuals (about 0.28 of the
    # data's magnitude, relative) would make a trajectory error of 0.2 look
    # resolved. Without a noise level given, the fit is not verified; with the true
    # one, it is.
    ts = np.linspace(0.0, 1.0, 11)
    ys = 1 + 0.5 * np.asarray(jr.normal(jr.key(3), (11, 1)))
    options: dict[str, Any] = dict(
        solver=din.solver_from_name("radau5"),
        optimiser=optax.adam(1e-3),
        epochs=0,
        steps_per_interval=1,
        progress=False,
    )
    model = din.NeuralVectorField(din.PolynomialLibrary(1, 1))
    with pytest.warns(din.UnverifiedFitWarning, match="does not fit the data"):
        estimated = din.fit(model, ts, ys, **options)
    verification = estimated.verification
    assert not verification.verified
    assert verification.trajectory_error <= 2 * verification.resolution
    scale = float(np.max(np.abs(ys)))
    given = din.fit(model, ts, ys, noise=0.5 / scale, **options)
    assert given.verification.verified, given.verification.message


@pytest.mark.slow
def test_auto_steps_start_where_one_step_per_gap_cannot_be_solved():
    # x' = -50 x³ from 2, observed every 0.1: with the true equation, one step of the
    # first gap (h λ = -60 at the start) defeats Newton's method, so the loss at the
    # start would be infinite; 16 steps solve it.
    ts = np.linspace(0.0, 1.0, 11)
    ys = 1 / np.sqrt(1 / 4 + 100 * ts)
    library = din.PolynomialLibrary(1, 3)
    truth = eqx.tree_at(
        lambda m: m.coefficients, library, jnp.array([[0.0, 0.0, 0.0, -50.0]])
    )
    options: dict[str, Any] = dict(
        solver=din.solver_from_name("radau5"),
        optimiser=din.optimiser_from_name("levenberg-marquardt"),
        epochs=20,
        progress=False,
    )
    result = din.fit(din.NeuralVectorField(truth), ts, ys[:, None], **options)
    assert not result.stopped_early, result.message
    assert result.verification.verified, result.verification.message
    assert result.steps[0, 0] >= 16
    rate = float(result.model.learned.coefficients[0, 3])
    assert abs(rate + 50) / 50 < 1e-2
