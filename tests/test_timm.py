"""DiffStride in timm's anti-aliasing slot (diffstride.timm), and convert() replacing the
blur-then-subsample layers timm's anti-aliased ResNets already have."""
import random

import pytest
import torch

import diffstride
from diffstride import pooling

timm = pytest.importorskip("timm")
import diffstride.timm as dtimm  # noqa: E402

from .conftest import move_strides  # noqa: E402


def _move_and_step(model, seed):
    """Strides moved at random, as training moves them; a training step with the complexity term."""
    move_strides(model, random.Random(seed))
    model.train()
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(-1).mean() + diffstride.complexity_loss(model)
    loss.backward()
    return [m for _, m in pooling.pooling_layers(model)]


@pytest.mark.parametrize("name", ["resnet18", "resnet50d", "seresnet50"])
def test_timm_models_built_with_diffstride_in_the_aa_slot(name):
    torch.manual_seed(0)
    model = dtimm.create_model(name, num_classes=5, example_input=torch.zeros(1, 3, 64, 64),
                               pooling_kwargs={"smoothness_factor": 2.0})
    layers = _move_and_step(model, 0)
    assert all(isinstance(m, pooling.DiffStride) and m.smoothness_factor == 2.0 for m in layers)
    assert all(torch.isfinite(m.strides.grad).all() for m in layers)
    # the block's aa layer is the one instance its shortcut goes through
    block = model.layer2[0]
    shortcut = [m for m in block.downsample.modules() if isinstance(m, pooling.PoolingLayer)]
    assert shortcut and all(m is block.aa for m in shortcut)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        assert torch.allclose(diffstride.freeze(model)(x), before, atol=1e-5)


def test_the_aa_class_alone_fills_timms_slot_and_convert_ties_the_shortcuts():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=3, aa_layer=dtimm.aa_layer(smoothness_factor=3.0))
    assert isinstance(model.layer3[0].aa, pooling.DiffStride) and model.layer3[0].aa.strides.tolist() == [2.0, 2.0]
    assert model.layer3[0].downsample[0].stride == (2, 2)  # timm's shortcut still subsamples by 2
    converted, changes = diffstride.convert(model, example_input=torch.zeros(1, 3, 64, 64))
    tied = {c.name: c.pooling for c in changes}
    assert tied["layer3.0.downsample.0"] == "layer3.0.aa"
    assert converted.layer3[0].downsample[0][1] is converted.layer3[0].aa
    with pytest.raises(TypeError, match="pooling_cls must be a pooling class of diffstride.pooling"):
        dtimm.aa_layer(torch.nn.AvgPool2d)


def test_convert_replaces_timms_blurpool_layers():
    """timm's anti-aliased ResNet (BlurPool2d after stride-1 convolutions): each blur layer
    becomes the pooling layer, its shortcut tied to it; the stride-1 convolutions stay."""
    torch.manual_seed(0)
    model = timm.create_model("resnetblur18", num_classes=4)
    converted, changes = diffstride.convert(model, example_input=torch.zeros(1, 3, 64, 64))
    kinds = {c.name: c.kind for c in changes}
    assert kinds["layer2.0.aa"] == "blur" and kinds["layer2.0.downsample.0"] == "conv"
    assert isinstance(converted.layer2[0].aa, pooling.DiffStride)
    assert converted.layer2[0].conv1.stride == (1, 1)
    assert not any(type(m).__name__ == "BlurPool2d" for m in converted.modules())
    layers = _move_and_step(converted, 1)
    assert all(torch.isfinite(m.strides.grad).all() for m in layers)
    # with the blur kind left out, the blur layers stay and only the other strided layers convert
    kept, changes = diffstride.convert(model, layers=("conv", "maxpool"), example_input=torch.zeros(1, 3, 64, 64),
                                       pooling_cls=pooling.FixedSpectralPooling)
    assert sum(type(m).__name__ == "BlurPool2d" for m in kept.modules()) == 4


def test_diffstride_timm_is_reachable_from_the_package_without_its_own_import():
    import subprocess
    import sys

    code = ("import diffstride, timm\n"
            "m = timm.create_model('resnet18', aa_layer=diffstride.timm.aa_layer())\n"
            "print(type(m.layer2[0].aa).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "DiffStrideAA", out.stderr[-2000:]
