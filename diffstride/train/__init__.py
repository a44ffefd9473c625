"""The training system: the reference's loop in PyTorch, with checkpoints, resume and torchrun.

- :mod:`~diffstride.train.loop`: :func:`train` (the Gin name ``train.train``);
- :mod:`~diffstride.train.main`: the command line (``diffstride-train``,
  ``python3 -m diffstride.examples.main``) and its configs;
- :mod:`~diffstride.train.run_state`, :mod:`~diffstride.train.checkpoint`,
  :mod:`~diffstride.train.workdir`: what a run saves, how it resumes, the work directory and its lock;
- :mod:`~diffstride.train.optim`: SGD, schedules and the loss with Keras' meaning;
- :mod:`~diffstride.train.models`, :mod:`~diffstride.train.configurables`: the networks and the
  reference's Gin names; :mod:`~diffstride.train.logs`, :mod:`~diffstride.train.distributed`.

Needs the ``train`` extra (``pip install -e ".[train]"``).
"""
from diffstride.train.budget import Budget
from diffstride.train.loop import build, epoch_metrics, evaluate, train, train_one_epoch
from diffstride.train.run_state import (UNCHECKED_PARAMETERS, ConfigChanged, NoUsableCheckpoint, RunState, TrainingError,
                                        TrainingSetup, config_differences, resolved_config)

__all__ = ["train", "build", "TrainingSetup", "train_one_epoch", "evaluate", "epoch_metrics", "TrainingError",
           "ConfigChanged", "NoUsableCheckpoint", "RunState", "resolved_config", "config_differences",
           "UNCHECKED_PARAMETERS", "Budget"]
