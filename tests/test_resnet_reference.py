"""Our ResNets against the reference's own Keras ResNets (tests/data/tf_resnet_reference.*).

The reference (google-research/diffstride ``resnet.py``, TensorFlow 2.21 + tf_keras, float32)
built five models, set every weight and BatchNorm statistic to non-trivial values and ran one
input in inference and in training mode. Loaded with those weights through
``keras_weights.load_reference_weights``, ours must give the same outputs: max |ours - ref| / max |ref|
<= 1e-4 (measured worst: 1.0e-6, benchmarks/reference_resnets.py). BatchNorm epsilon is the recipe's 1e-5 (with Keras' default
1e-3 the inference outputs differ by 3e-3 to 2e-2, so the test would fail).
"""
import json
import os

import numpy as np
import pytest
import torch

from diffstride import keras_weights, pooling, resnet

from .conftest import DATA, rel_err

with open(os.path.join(DATA, "tf_resnet_reference.json")) as f:
    META = json.load(f)
ARRAYS = np.load(os.path.join(DATA, "tf_resnet_reference.npz"))
MODELS = [k for k, v in META.items() if "weights" in v]


def _build(key):
    case = META[key]
    kwargs = dict(case["kwargs"])
    name = kwargs.pop("pooling_cls")
    kwargs["pooling_cls"] = None if name is None else getattr(pooling, name)
    kwargs["in_channels"] = case["input_nhwc"][-1]
    if "filters" in kwargs:
        return resnet.Resnet(**kwargs)
    return resnet.resnet56(**kwargs)


def _reference_weights(key):
    return [(name, ARRAYS[f"{key}/w{i:03d}"]) for i, name in enumerate(META[key]["weights"])]


def _input(key):
    return torch.from_numpy(ARRAYS[f"{key}/x_nhwc"]).permute(0, 3, 1, 2).contiguous()


def test_the_golden_data_covers_every_pooling_and_both_depths():
    assert len(MODELS) == 5
    assert {META[k]["kwargs"]["pooling_cls"] for k in MODELS} == {"DiffStride", "FixedSpectralPooling", None}


@pytest.mark.parametrize("key", MODELS)
def test_trainable_parameter_count_matches_the_reference(key):
    model = _build(key)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == META[key]["trainable_params"]


@pytest.mark.parametrize("key, kwargs", [
    ("resnet18_diffstride_c10", {"num_output_classes": 10, "pooling_cls": pooling.DiffStride}),
    ("resnet18_strided_c100_poor", {"num_output_classes": 100, "strides": [1, 1, 3, 2, 3]}),
])
def test_resnet18_parameter_count_matches_the_reference(key, kwargs):
    model = resnet.resnet18(**kwargs)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == META[key]["trainable_params"]


@pytest.mark.parametrize("mode", ["inference", "training"])
@pytest.mark.parametrize("key", MODELS)
def test_outputs_match_the_reference_with_its_weights(key, mode):
    model = _build(key)
    keras_weights.load_reference_weights(model, _reference_weights(key))
    model.train(mode == "training")
    with torch.no_grad():
        y = model(_input(key))
    assert rel_err(y, ARRAYS[f"{key}/y_{mode}"]) <= 1e-4


@pytest.mark.parametrize("key", MODELS)
def test_channels_last_model_matches_the_reference_too(key):
    model = _build(key).to(memory_format=torch.channels_last)
    keras_weights.load_reference_weights(model, _reference_weights(key))
    with torch.no_grad():
        y = model.eval()(_input(key).contiguous(memory_format=torch.channels_last))
    assert rel_err(y, ARRAYS[f"{key}/y_inference"]) <= 1e-4


def test_loading_copies_strides_statistics_and_transposed_kernels():
    key = "small_diffstride"
    model = _build(key)
    weights = _reference_weights(key)
    keras_weights.load_reference_weights(model, weights)
    named = dict(weights)
    assert model.stem_pooling.strides.tolist() == pytest.approx(named["diff_stride/strides:0"].tolist())
    kernel = named["residual_layer/conv2d_1/kernel:0"]  # (kh, kw, in, out)
    assert torch.equal(model.blocks[0][0].strided_conv.weight, torch.from_numpy(kernel).permute(3, 2, 0, 1))
    assert torch.equal(model.blocks[0][0].bn1.running_var,
                       torch.from_numpy(named["residual_layer/batch_normalization/moving_variance:0"]))
    assert torch.equal(model.fc.weight, torch.from_numpy(named["dense/kernel:0"]).T)


def test_fixed_spectral_pooling_strides_are_loaded():
    key = "small_spectral"
    model = _build(key)
    weights = [(n, np.full_like(a, 3.0) if n.endswith("strides:0") else a) for n, a in _reference_weights(key)]
    keras_weights.load_reference_weights(model, weights)
    assert [layer.strides for _, layer in pooling.pooling_layers(model)] == [(3.0, 3.0)] * 3


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("edit, match", [
    (lambda w: w[:-1], r"has 31 weights, but this model expects 32; the first missing one is the 'bias' of fc.bias"),
    (lambda w: w + [("extra/kernel:0", np.zeros(3))], r"has 33 weights, but this model expects 32; the first extra one is 'extra/kernel:0'"),
    (lambda w: [w[0], w[3], w[2], w[1]] + w[4:], r"reference weight 1 'residual_layer/conv2d_1/kernel:0' is a 'kernel', "
                                                  r"but this model expects the 'strides' of stem_pooling.strides"),
    (lambda w: w[:3] + [w[4], w[3]] + w[5:], r"reference weight 3 'residual_layer/conv2d_2/kernel:0' has shape \(3, 3, 32, 32\), "
                                             r"but blocks.0.0.strided_conv.weight needs \(3, 3, 16, 32\)"),
    (lambda w: [("conv2d/gamma:0", w[0][1])] + w[1:], r"reference weight 0 'conv2d/gamma:0' is a 'gamma', but this model "
                                                      r"expects the 'kernel' of stem_conv.weight"),
])
def test_a_mismatch_is_named_and_nothing_is_loaded(edit, match):
    key = "small_diffstride"
    model = _build(key)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        keras_weights.load_reference_weights(model, edit(_reference_weights(key)))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_model_built_with_other_arguments_is_refused():
    model = resnet.Resnet([16, 32, 64], [1, 2, 2], num_output_classes=10, num_layers=1, in_channels=1)  # strided
    with pytest.raises(ValueError, match=r"reference weight 1 'diff_stride/strides:0' is a 'strides', but this model "
                                         r"expects the 'kernel' of blocks.0.0.strided_conv.weight"):
        keras_weights.load_reference_weights(model, _reference_weights("small_diffstride"))


def test_tf_variables_are_accepted_as_they_come_from_keras_model_weights():
    class Variable:  # what keras_model.weights holds: a name and .numpy()
        def __init__(self, name, value):
            self.name, self._value = name, value

        def numpy(self):
            return self._value

    key = "small_strided"
    a, b = _build(key), _build(key)
    keras_weights.load_reference_weights(a, _reference_weights(key))
    keras_weights.load_reference_weights(b, [Variable(n, v) for n, v in _reference_weights(key)])
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_old_name_resnet_load_reference_weights_still_loads_with_a_deprecation_warning():
    key = MODELS[0]
    with pytest.warns(DeprecationWarning, match="keras_weights.load_reference_weights"):
        load = resnet.load_reference_weights
    assert load is keras_weights.load_reference_weights
    model = _build(key)
    load(model, _reference_weights(key))
    with torch.no_grad():
        assert rel_err(model.eval()(_input(key)), ARRAYS[f"{key}/y_inference"]) <= 1e-4
