"""Registers the Gin names that the reference's configs use (the library itself has no Gin).

Importing this module (the reference's configs start with
``import diffstride.examples.external_configurables``) makes available:

- ``@resnet.Resnet``, ``@resnet.resnet18``, ``@resnet.resnet56`` and ``batch_norm``: the
  bindings ``resnet.Resnet.*`` apply to every network, also when built through ``resnet18`` /
  ``resnet56``, and ``batch_norm.momentum`` / ``.epsilon`` to every BatchNorm of it (the
  reference's ``ResidualLayer`` / ``ResnetBlock`` names are not registered: nothing in its
  configs binds them);
- ``complexity_loss`` (``complexity_loss.weighting = 'flops'``);
- ``@pooling.DiffStride``, ``@pooling.FixedSpectralPooling``, ``@pooling.SpatialPooling`` (and
  the 1-D and 3-D layers), so that ``pooling.DiffStride.smoothness_factor = ...`` binds their arguments;
- ``@tf.keras.optimizers.SGD``, ``@tf.keras.optimizers.schedules.PiecewiseConstantDecay``,
  ``@tf.keras.optimizers.schedules.CosineDecay`` and ``@tf.keras.losses.CategoricalCrossentropy``,
  with Keras' meaning (see :mod:`diffstride.examples.optim`).
"""
import gin

from diffstride import complexity, pooling, resnet
from diffstride.examples import optim

_REGISTERED = False
CATEGORICAL_CROSSENTROPY = optim.CategoricalCrossentropy  # replaced by its Gin-configurable version
COMPLEXITY_LOSS = complexity.complexity_loss  # likewise

BATCH_NORM = gin.external_configurable(resnet.batch_norm, name="batch_norm", module="diffstride.resnet")


@gin.configurable("Resnet", module="diffstride.resnet")
def _resnet(filters, strides, num_output_classes=gin.REQUIRED, **kwargs):
    """``resnet.Resnet`` with the Gin-configured ``batch_norm`` (see :class:`diffstride.resnet.Resnet`)."""
    kwargs.setdefault("norm_layer", BATCH_NORM)
    return resnet.Resnet(filters, strides, num_output_classes, **kwargs)


@gin.configurable("resnet18", module="diffstride.resnet")
def _resnet18(strides=None, **kwargs):
    """``resnet.resnet18``: the reference's ResNet-18 through the Gin-configured ``resnet.Resnet``."""
    return _resnet(strides=resnet.RESNET18_STRIDES if strides is None else strides, **resnet.RESNET18, **kwargs)


@gin.configurable("resnet56", module="diffstride.resnet")
def _resnet56(strides=None, **kwargs):
    """``resnet.resnet56``: the reference's ResNet-56 through the Gin-configured ``resnet.Resnet``."""
    return _resnet(strides=resnet.RESNET56_STRIDES if strides is None else strides, **resnet.RESNET56, **kwargs)


def register() -> None:
    """Registers every name once (safe to call again)."""
    global _REGISTERED, CATEGORICAL_CROSSENTROPY, COMPLEXITY_LOSS
    if _REGISTERED:
        return
    COMPLEXITY_LOSS = gin.external_configurable(complexity.complexity_loss, module="diffstride.complexity")
    for cls in (pooling.DiffStride, pooling.DiffStride1d, pooling.DiffStride3d, pooling.FixedSpectralPooling,
                pooling.FixedSpectralPooling1d, pooling.FixedSpectralPooling3d, pooling.SpatialPooling,
                pooling.SpatialPooling1d, pooling.SpatialPooling3d):
        gin.external_configurable(cls, module="diffstride.pooling")
    keras = {
        "tf.keras.optimizers": [optim.SGD],
        "tf.keras.optimizers.schedules": [optim.PiecewiseConstantDecay, optim.CosineDecay],
        "tf.keras.losses": [optim.CategoricalCrossentropy],
    }
    for module, objects in keras.items():
        for obj in objects:
            configurable = gin.external_configurable(obj, module=module)
            if obj is optim.CategoricalCrossentropy:
                CATEGORICAL_CROSSENTROPY = configurable
    _REGISTERED = True


register()
