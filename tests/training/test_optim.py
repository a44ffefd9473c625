"""diffstride.train.optim against Keras' own formulas (written out here from Keras' documentation
of PiecewiseConstantDecay, CosineDecay, SGD and CategoricalCrossentropy, in NumPy)."""
import math

import numpy as np
import pytest
import torch

from diffstride.train import optim


# ----------------------------------------------------------------------------------------------
# Schedules


def test_piecewise_constant_decay_takes_each_value_up_to_and_including_its_boundary():
    # Keras: values[0] while step <= boundaries[0], values[1] while boundaries[0] < step <= boundaries[1], ...
    schedule = optim.PiecewiseConstantDecay([100, 200], [0.1, 0.01, 0.001])
    expected = {0: 0.1, 99: 0.1, 100: 0.1, 101: 0.01, 200: 0.01, 201: 0.001, 10**6: 0.001}
    assert {step: schedule(step) for step in expected} == expected


def test_the_packaged_cifar_schedule_by_step():
    # cifar10.gin's schedule (the reference's): a warm-up at 0.01, then 0.1, 0.01, 0.001
    boundaries, values = [400, 18_000, 32_000], [0.01, 0.1, 0.01, 0.001]
    schedule = optim.PiecewiseConstantDecay(boundaries, values)
    for i, boundary in enumerate(boundaries):
        assert schedule(boundary) == values[i] and schedule(boundary + 1) == values[i + 1]


@pytest.mark.parametrize("boundaries, values, message", [
    ([100], [0.1], "len\\(values\\) == len\\(boundaries\\) \\+ 1"),
    ([200, 100], [0.1, 0.01, 0.001], "must increase"),
])
def test_piecewise_constant_decay_refuses_inconsistent_arguments(boundaries, values, message):
    with pytest.raises(ValueError, match=message):
        optim.PiecewiseConstantDecay(boundaries, values)


def _keras_cosine_decay(initial, decay_steps, alpha, step):
    step = min(step, decay_steps)
    cosine = 0.5 * (1.0 + np.cos(np.pi * step / decay_steps))
    return initial * ((1.0 - alpha) * cosine + alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_cosine_decay_follows_keras_formula_and_holds_its_floor(alpha):
    schedule = optim.CosineDecay(0.4, 1000, alpha)
    for step in (0, 1, 250, 500, 999, 1000, 5000):
        assert schedule(step) == pytest.approx(_keras_cosine_decay(0.4, 1000, alpha, step), rel=1e-12)
    assert schedule(0) == pytest.approx(0.4)
    assert schedule(500) == pytest.approx(0.4 * (0.5 * (1 - alpha) + alpha))
    assert schedule(1000) == schedule(10**6) == pytest.approx(0.4 * alpha, abs=1e-15)


def test_cosine_decay_refuses_no_steps():
    with pytest.raises(ValueError, match="decay_steps > 0"):
        optim.CosineDecay(0.1, 0)


# ----------------------------------------------------------------------------------------------
# SGD


def _keras_sgd(w, grads, lr, momentum, nesterov):
    """Keras' SGD: velocity = momentum * velocity - lr * g; w += velocity (nesterov: w += momentum * velocity - lr * g)."""
    velocity = np.zeros_like(w)
    for g in grads:
        velocity = momentum * velocity - lr * g
        w = w + (momentum * velocity - lr * g if nesterov else velocity)
    return w


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_with_a_constant_rate_makes_keras_updates(nesterov):
    rng = np.random.default_rng(0)
    start = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(6)]
    spec = optim.SGD(learning_rate=0.05, momentum=0.9, nesterov=nesterov)
    w = torch.nn.Parameter(torch.tensor(start))
    opt = spec.build([{"params": [w]}])
    for g in grads:
        w.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(w.detach().numpy(), _keras_sgd(start, grads, 0.05, 0.9, nesterov), rtol=1e-12)


def test_sgd_learning_rate_at_reads_a_number_or_a_schedule():
    assert optim.SGD(0.3).learning_rate_at(12345) == 0.3
    spec = optim.SGD(optim.PiecewiseConstantDecay([10], [0.1, 0.01]), momentum=0.9)
    assert (spec.learning_rate_at(10), spec.learning_rate_at(11)) == (0.1, 0.01)
    assert spec.build([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"] == 0.1  # the rate at step 0


@pytest.mark.parametrize("kwargs, message", [
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"learning_rate": float("nan")}, "learning_rate must be > 0"),
    ({"momentum": 1.0}, "momentum must be in \\[0, 1\\)"),
    ({"momentum": -0.1}, "momentum must be in \\[0, 1\\)"),
])
def test_sgd_refuses_bad_arguments_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.SGD(**kwargs)


# ----------------------------------------------------------------------------------------------
# CategoricalCrossentropy


def _keras_categorical_crossentropy(probs, labels, label_smoothing=0.0, eps=1e-7):
    """Keras on probabilities: smooth the labels, rescale the outputs to sum to 1, clip to
    [eps, 1 - eps], -sum(labels * log), mean over the batch."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    labels = labels * (1 - label_smoothing) + label_smoothing / labels.shape[-1]
    probs = np.clip(probs / probs.sum(-1, keepdims=True), eps, 1 - eps)
    return float(np.mean(-(labels * np.log(probs)).sum(-1)))


PROBS = [[0.7, 0.2, 0.1], [0.0, 0.5, 0.5], [0.25, 0.25, 0.5]]  # the second has a zero where its label is
LABELS = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.3, 0.0, 0.7]]  # one-hot, and one mixed by Mixup


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_categorical_crossentropy_on_probabilities_is_keras(label_smoothing):
    loss = optim.CategoricalCrossentropy(label_smoothing=label_smoothing)(torch.tensor(PROBS), torch.tensor(LABELS))
    assert float(loss) == pytest.approx(_keras_categorical_crossentropy(PROBS, LABELS, label_smoothing), rel=1e-6)


def test_a_zero_probability_costs_minus_log_epsilon_not_infinity():
    loss = optim.CategoricalCrossentropy()(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert float(loss) == pytest.approx(-math.log(1e-7), rel=1e-5)


def test_from_logits_is_the_log_softmax_form_and_class_indices_are_one_hot():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    indices = torch.tensor([0, 2])
    loss = optim.CategoricalCrossentropy(from_logits=True)
    expected = -torch.log_softmax(logits.double(), -1)[torch.arange(2), indices].mean()
    assert float(loss(logits, indices)) == pytest.approx(float(expected), rel=1e-6)
    assert float(loss(logits, torch.nn.functional.one_hot(indices, 3).float())) == pytest.approx(float(expected), rel=1e-6)


def test_label_smoothing_out_of_range_is_refused():
    with pytest.raises(ValueError, match="label_smoothing must be in \\[0, 1\\]"):
        optim.CategoricalCrossentropy(label_smoothing=1.5)
