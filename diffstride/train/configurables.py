"""Registers the Gin names that the reference's configs use (the library itself has no Gin).

Importing this module (the reference's configs start with
``import diffstride.train.configurables``) makes available:

- ``@resnet.Resnet``, ``@resnet.resnet18``, ``@resnet.resnet56`` and ``batch_norm``: the
  bindings ``resnet.Resnet.*`` apply to every network, also when built through ``resnet18`` /
  ``resnet56``, and ``batch_norm.momentum`` / ``.epsilon`` to every BatchNorm of it (the
  reference's ``ResidualLayer`` / ``ResnetBlock`` names are not registered: nothing in its
  configs binds them);
- ``complexity_loss`` (``complexity_loss.weighting = 'flops'``);
- ``@pooling.DiffStride``, ``@pooling.FixedSpectralPooling``, ``@pooling.SpatialPooling`` (and
  the 1-D and 3-D layers), so that ``pooling.DiffStride.smoothness_factor = ...`` binds their arguments;
- ``@models.torchvision`` and ``@models.timm``: any torchvision or timm classifier by name,
  converted (:mod:`diffstride.train.models`);
- ``@tf.keras.optimizers.SGD``, ``@tf.keras.optimizers.schedules.PiecewiseConstantDecay``,
  ``@tf.keras.optimizers.schedules.CosineDecay`` and ``@tf.keras.losses.CategoricalCrossentropy``,
  with Keras' meaning (see :mod:`diffstride.train.optim`).
"""
import gin

from diffstride import complexity, pooling, resnet
from diffstride.train import models

# Registered once, at import (Gin refuses a second registration of a name; Python imports a
from diffstride.train import optim
# module once). The Gin-configured callables are module attributes: the training loop uses
# ``categorical_crossentropy`` and ``complexity_loss`` as its defaults, so that the reference's
# ``tf.keras.losses.CategoricalCrossentropy.label_smoothing`` and ``complexity_loss.weighting``
# bindings apply.
batch_norm = gin.external_configurable(resnet.batch_norm, name="batch_norm", module="diffstride.resnet")
complexity_loss = gin.external_configurable(complexity.complexity_loss, module="diffstride.complexity")
categorical_crossentropy = gin.external_configurable(optim.CategoricalCrossentropy, module="tf.keras.losses")
gin.external_configurable(optim.SGD, module="tf.keras.optimizers")
gin.external_configurable(models.torchvision_model, name="torchvision", module="models")
gin.external_configurable(models.timm_model, name="timm", module="models")
for _schedule in (optim.PiecewiseConstantDecay, optim.CosineDecay):
    gin.external_configurable(_schedule, module="tf.keras.optimizers.schedules")
for _layer in (pooling.DiffStride, pooling.DiffStride1d, pooling.DiffStride3d, pooling.FixedSpectralPooling,
               pooling.FixedSpectralPooling1d, pooling.FixedSpectralPooling3d, pooling.SpatialPooling,
               pooling.SpatialPooling1d, pooling.SpatialPooling3d):
    gin.external_configurable(_layer, module="diffstride.pooling")


# The reference's configs bind ``resnet.Resnet.*`` and ``batch_norm.*`` for networks built through
# ``resnet.resnet18`` / ``resnet56``: these three build through the Gin-configured ``Resnet`` with
# the Gin-configured ``batch_norm`` (the library itself has no Gin).
@gin.configurable("Resnet", module="diffstride.resnet")
def _resnet(filters, strides, num_output_classes=gin.REQUIRED, **kwargs):
    """``resnet.Resnet`` with the Gin-configured ``batch_norm`` (see :class:`diffstride.resnet.Resnet`)."""
    kwargs.setdefault("norm_layer", batch_norm)
    return resnet.Resnet(filters, strides, num_output_classes, **kwargs)


@gin.configurable("resnet18", module="diffstride.resnet")
def _resnet18(strides=None, **kwargs):
    """``resnet.resnet18``: the reference's ResNet-18 through the Gin-configured ``resnet.Resnet``."""
    return _resnet(strides=resnet.RESNET18_STRIDES if strides is None else strides, **resnet.RESNET18, **kwargs)


@gin.configurable("resnet56", module="diffstride.resnet")
def _resnet56(strides=None, **kwargs):
    """``resnet.resnet56``: the reference's ResNet-56 through the Gin-configured ``resnet.Resnet``."""
    return _resnet(strides=resnet.RESNET56_STRIDES if strides is None else strides, **resnet.RESNET56, **kwargs)
