"""The reference's Keras weights in our ResNets: layouts converted, every weight checked first.

Weights trained with google-research/diffstride (TensorFlow) load into a
:class:`diffstride.resnet.Resnet` built with the Keras model's arguments
(``resnet.load_reference_weights``, its name before, still works, with a DeprecationWarning).
"""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from diffstride.resnet import Resnet

__all__ = ["load_reference_weights"]


class _Slot:
    """One Keras weight as our model expects it: its kind, Keras shape, and where it goes."""

    def __init__(self, kind: str, module: nn.Module, attr: str, where: str, keras_shape: Tuple[int, ...],
                 to_torch: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> None:
        self.kind, self.module, self.attr, self.where = kind, module, attr, where
        self.keras_shape, self.to_torch = keras_shape, to_torch


def _kernel_slot(name: str, layer: nn.Module) -> _Slot:
    w = layer.weight  # torch (out, in, *k); Keras (*k, in, out)
    nk = w.dim() - 2
    keras_shape = tuple(w.shape[2:]) + (w.shape[1], w.shape[0])
    order = (nk + 1, nk) + tuple(range(nk))
    return _Slot("kernel", layer, "weight", f"{name}.weight", keras_shape, lambda a: np.transpose(a, order))


def _bn_slots(name: str, bn: nn.Module) -> Tuple[List[_Slot], List[_Slot]]:
    n = (bn.num_features,)
    trainable = [_Slot("gamma", bn, "weight", f"{name}.weight", n), _Slot("beta", bn, "bias", f"{name}.bias", n)]
    frozen = [_Slot("moving_mean", bn, "running_mean", f"{name}.running_mean", n),
              _Slot("moving_variance", bn, "running_var", f"{name}.running_var", n)]
    return trainable, frozen


def _pooling_slots(name: str, layer: Optional[nn.Module]) -> Tuple[List[_Slot], List[_Slot]]:
    """The reference's DiffStride has a (trainable or not) ``strides`` weight, its
    FixedSpectralPooling a non-trainable one, its SpatialPooling none."""
    strides = getattr(layer, "strides", None)
    if layer is None or strides is None or type(layer).__name__.startswith("SpatialPooling"):
        return [], []
    if isinstance(strides, torch.Tensor):
        slot = _Slot("strides", layer, "strides", f"{name}.strides", tuple(strides.shape))
        return ([slot], []) if strides.requires_grad else ([], [slot])
    return [], [_Slot("strides", layer, "strides", f"{name}.strides", (len(strides),))]


def _reference_slots(model: "Resnet") -> List[_Slot]:
    """Our model's tensors in the order of the reference Keras model's ``model.weights``.

    Keras lists the weights of each top-level layer in turn; a layer that is not a model (the
    residual layer) lists all its trainable weights, then all its non-trainable ones, each in
    the order its sub-layers were assigned (pooling, strided conv, unstrided conv, the two
    batch norms, shortcut conv).
    """
    slots = [_kernel_slot("stem_conv", model.stem_conv)]
    stem_trainable, stem_frozen = _pooling_slots("stem_pooling", model.stem_pooling)
    slots += stem_trainable + stem_frozen
    for b, block in enumerate(model.blocks):
        for i, layer in enumerate(block):
            prefix = f"blocks.{b}.{i}"
            trainable, frozen = _pooling_slots(f"{prefix}.pooling", layer.pooling)
            trainable += [_kernel_slot(f"{prefix}.strided_conv", layer.strided_conv),
                          _kernel_slot(f"{prefix}.unstrided_conv", layer.unstrided_conv)]
            for bn_name in ("bn1", "bn2"):
                bn_trainable, bn_frozen = _bn_slots(f"{prefix}.{bn_name}", getattr(layer, bn_name))
                trainable += bn_trainable
                frozen += bn_frozen
            if layer.shortcut_conv is not None:
                trainable.append(_kernel_slot(f"{prefix}.shortcut_conv", layer.shortcut_conv))
            slots += trainable + frozen
    head_trainable, head_frozen = _bn_slots("head_bn", model.head_bn)
    slots += head_trainable + head_frozen
    fc = model.fc
    slots.append(_Slot("kernel", fc, "weight", "fc.weight", (fc.in_features, fc.out_features), np.transpose))
    slots.append(_Slot("bias", fc, "bias", "fc.bias", (fc.out_features,)))
    return slots


def _named_arrays(weights) -> List[Tuple[str, np.ndarray]]:
    pairs = []
    for i, item in enumerate(weights):
        if hasattr(item, "numpy") and hasattr(item, "name"):  # a tf.Variable from keras_model.weights
            name, value = item.name, item.numpy()
        else:
            try:
                name, value = item
            except (TypeError, ValueError):
                raise TypeError(f"weights[{i}] must be a (name, array) pair or a tf.Variable, but got {type(item).__name__}") from None
        pairs.append((str(name), np.asarray(value)))
    return pairs


def _kind(name: str) -> str:
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def load_reference_weights(model: "Resnet", weights: Iterable) -> None:
    """Loads the weights of the reference's Keras ResNet (google-research/diffstride) into ``model``.

    Args:
        model: a :class:`Resnet` built with the same arguments as the Keras model.
        weights: the Keras model's ``model.weights`` (tf.Variables), or the same as an ordered
            list of ``(name, array)`` pairs, e.g. ``[(v.name, v.numpy()) for v in keras_model.weights]``.

    Kernels are converted to PyTorch's layouts, BatchNorm moving statistics go to the running
    statistics, and pooling strides to the pooling layers. Everything is checked before
    anything is written: the count, and for each weight its kind (from the name's last part:
    ``kernel``, ``strides``, ``gamma``, ...) and shape; the first mismatch is named in a
    ``ValueError`` and the model is left unchanged.

    Examples:
        >>> # in TensorFlow: pairs = [(v.name, v.numpy()) for v in keras_model.weights]
        >>> model = Resnet([4, 8], [1, 2], num_output_classes=3, num_layers=1, in_channels=1)
        >>> pairs = [(f"w{i}/{s.kind}:0", np.zeros(s.keras_shape, np.float32))
        ...          for i, s in enumerate(_reference_slots(model))]
        >>> load_reference_weights(model, pairs)
        >>> float(model.fc.weight.detach().abs().sum())
        0.0
    """
    if not isinstance(model, Resnet):
        raise TypeError(f"load_reference_weights expects a diffstride.resnet.Resnet, but got {type(model).__name__}")
    pairs = _named_arrays(weights)
    slots = _reference_slots(model)
    for i, ((name, value), slot) in enumerate(zip(pairs, slots)):
        if _kind(name) != slot.kind:
            raise ValueError(
                f"reference weight {i} {name!r} is a {_kind(name)!r}, but this model expects the {slot.kind!r} of "
                f"{slot.where} there; build the model with the reference model's arguments")
        if tuple(value.shape) != slot.keras_shape:
            raise ValueError(
                f"reference weight {i} {name!r} has shape {tuple(value.shape)}, but {slot.where} needs "
                f"{slot.keras_shape} (Keras layout); build the model with the reference model's arguments")
    if len(pairs) != len(slots):
        raise ValueError(
            f"the reference model has {len(pairs)} weights, but this model expects {len(slots)}"
            + (f"; the first extra one is {pairs[len(slots)][0]!r}" if len(pairs) > len(slots)
               else f"; the first missing one is the {slots[len(pairs)].kind!r} of {slots[len(pairs)].where}"))
    with torch.no_grad():
        for (_, value), slot in zip(pairs, slots):
            array = np.ascontiguousarray(slot.to_torch(value))
            target = getattr(slot.module, slot.attr)
            if isinstance(target, torch.Tensor):
                target.copy_(torch.from_numpy(array).to(target.dtype))
            else:  # FixedSpectralPooling keeps its fixed strides as Python floats
                setattr(slot.module, slot.attr, tuple(float(v) for v in array))
    for _, layer in model.named_modules():
        sync = getattr(layer, "_sync_known_values", None)
        if sync is not None:
            sync()
