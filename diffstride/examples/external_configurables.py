"""Registers the Gin names that the reference's configs use.

Importing this module (the reference's configs start with
``import diffstride.examples.external_configurables``) makes available:

- ``@pooling.DiffStride``, ``@pooling.FixedSpectralPooling``, ``@pooling.SpatialPooling`` (and
  the 1-D layers), so that ``pooling.DiffStride.smoothness_factor = ...`` binds their arguments;
- ``@tf.keras.optimizers.SGD``, ``@tf.keras.optimizers.schedules.PiecewiseConstantDecay``,
  ``@tf.keras.optimizers.schedules.CosineDecay`` and ``@tf.keras.losses.CategoricalCrossentropy``,
  with Keras' meaning (see :mod:`diffstride.examples.optim`).
"""
import gin

from diffstride import pooling
from diffstride.examples import optim

_REGISTERED = False
CATEGORICAL_CROSSENTROPY = optim.CategoricalCrossentropy  # replaced by its Gin-configurable version


def register() -> None:
    """Registers every name once (safe to call again)."""
    global _REGISTERED, CATEGORICAL_CROSSENTROPY
    if _REGISTERED:
        return
    for cls in (pooling.DiffStride, pooling.DiffStride1d, pooling.FixedSpectralPooling, pooling.FixedSpectralPooling1d,
                pooling.SpatialPooling, pooling.SpatialPooling1d):
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
