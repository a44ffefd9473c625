"""Any torchvision or timm classification model by name for the training system, its strided
downsampling converted to a pooling layer by :func:`diffstride.convert` (or left as it is).

Gin: ``train.train.model_cls = @models.torchvision`` (or ``@models.timm``) with
``models.torchvision.name = 'resnet18'``; ``pooling_cls`` takes ``@pooling.DiffStride`` (whose
own bindings, ``pooling.DiffStride.smoothness_factor = ...``, apply), ``@pooling.FixedSpectralPooling``
or None for the strided original.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import nn

from diffstride import pooling
from diffstride.convert import convert, set_submodule

__all__ = ["torchvision_model", "timm_model", "convert_for_training"]


def _first_conv(model: nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return name, module
    raise ValueError(f"{type(model).__name__} has no convolution to take {{in_channels}} input channels")


def adapt_in_channels(model: nn.Module, in_channels: int) -> None:
    """Makes the first convolution take ``in_channels`` (timm's rule for pretrained weights:
    1 channel gets the sum of the RGB kernels; other counts repeat them, scaled by 3 / in_channels)."""
    name, conv = _first_conv(model)
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ValueError(f"the first convolution {name} is grouped; cannot change its input channels to {in_channels}")
    new = type(conv)(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        weight = conv.weight
        if in_channels == 1:
            new.weight.copy_(weight.sum(1, keepdim=True))
        else:
            repeats = -(-in_channels // weight.shape[1])
            new.weight.copy_(weight.repeat(1, repeats, *([1] * (weight.dim() - 2)))[:, :in_channels]
                             * (weight.shape[1] / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    set_submodule(model, name, new)


def convert_for_training(model: nn.Module, pooling_cls: Optional[Callable], exclude: Sequence[str], example_shape: Sequence[int],
            weight_decay: float, convert_options: Optional[Dict[str, Any]]) -> nn.Module:
    """Converts ``model`` with ``pooling_cls`` (None: unchanged) and sets the Keras-style L2
    ``weight_decay`` the training loop reads (SGD's decay is ``2 * weight_decay``)."""
    if pooling_cls is not None:
        example = torch.zeros(1, *example_shape)
        model, _ = convert(model, pooling_cls, exclude=tuple(exclude), example_input=example, inplace=True,
                           **(convert_options or {}))
    model.weight_decay = weight_decay
    return model


def torchvision_model(name: str, num_output_classes: int, in_channels: int = 3, pretrained: bool = False,
                      pooling_cls: Optional[Callable] = pooling.DiffStride, exclude: Sequence[str] = (),
                      weight_decay: float = 0.0, image_size: int = 224,
                      convert_options: Optional[Dict[str, Any]] = None, **kwargs) -> nn.Module:
    """``torchvision.models.get_model(name)`` with ``num_output_classes`` outputs (logits; use
    ``tf.keras.losses.CategoricalCrossentropy.from_logits = True``), converted.

    ``pretrained``: the default ImageNet weights (a download where there is internet, then
    torch's cache); the classifier is replaced when the classes differ, the first convolution
    adapted to ``in_channels``. ``image_size``: the side of the example input that proves the
    conversion. Other keyword arguments go to the model's builder.
    """
    import torchvision

    if name not in torchvision.models.list_models():
        raise ValueError(f"torchvision has no model {name!r}; expected one of torchvision.models.list_models(), "
                         f"e.g. 'resnet18', 'resnet50', 'efficientnet_b0', 'convnext_tiny'")
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        model = torchvision.models.get_model(name, weights=weights, **kwargs)
        if num_output_classes != len(weights.meta["categories"]):
            _replace_classifier(model, num_output_classes)
    else:
        model = torchvision.models.get_model(name, num_classes=num_output_classes, **kwargs)
    adapt_in_channels(model, in_channels)
    return convert_for_training(model, pooling_cls, exclude, (in_channels, image_size, image_size), weight_decay, convert_options)


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    """The last ``nn.Linear`` (torchvision's ``fc``, ``classifier[-1]``, ``heads.head``) gets ``num_classes`` outputs."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classifier to give {num_classes} outputs")
    name, old = linears[-1]
    set_submodule(model, name, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def timm_model(name: str, num_output_classes: int, in_channels: int = 3, pretrained: bool = False,
               pooling_cls: Optional[Callable] = pooling.DiffStride, exclude: Sequence[str] = (),
               weight_decay: float = 0.0, image_size: int = 224,
               convert_options: Optional[Dict[str, Any]] = None, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained, num_classes, in_chans)`` (logits), converted; see
    :func:`torchvision_model`. Other keyword arguments go to ``timm.create_model``."""
    try:
        import timm
    except ImportError:
        raise ImportError("timm models need the timm package: pip install timm") from None
    if not timm.list_models(name):
        raise ValueError(f"timm has no model {name!r}; see timm.list_models('*pattern*')")
    model = timm.create_model(name, pretrained=pretrained, num_classes=num_output_classes, in_chans=in_channels,
                              **kwargs)
    return convert_for_training(model, pooling_cls, exclude, (in_channels, image_size, image_size), weight_decay, convert_options)
