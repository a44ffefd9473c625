"""The training system's data: built-in sets held on the device, and sources read from files.

- :mod:`~diffstride.data.loading`: :func:`load_datasets` (the Gin name ``data.load_datasets``),
  the front door of every dataset, in memory or from files;
- :mod:`~diffstride.data.builtin`: CIFAR, MNIST, translated MNIST, UCR and CBF, in memory;
- :mod:`~diffstride.data.batch_ops`: what is done to a batch on the device: normalise, augment
  (``@data.augment``), Mixup;
- :mod:`~diffstride.data.sources`, :mod:`~diffstride.data.transforms`, :mod:`~diffstride.data.loader`,
  :mod:`~diffstride.data.files`: folders, torchvision, Hugging Face and tar shards, decoded by
  DataLoader workers;
- :mod:`~diffstride.data.audio`: the log-mel front end; :mod:`~diffstride.data.randomness`: the
  keyed random streams that make batches independent of workers and resumes exact.

Needs the ``train`` extra (Gin); ``pip install -e ".[data]"`` for Hugging Face and audio files.
"""
from diffstride.data.batch_ops import Normalize, augment, augment_and_mix, mixup_pairs
from diffstride.data.builtin import (CIFAR_MEAN, CIFAR_STD, DATASETS, MNIST_MEAN, MNIST_STD, DatasetUnavailable, Split,
                                     default_data_dir)
from diffstride.data.loading import Datasets, EvaluationBatches, TrainingBatches, load_datasets
from diffstride.data.memory import InMemoryTestBatches, InMemoryTrainBatches, TestBatches, TrainBatches
from diffstride.data.sources import BadExample, DataError

__all__ = ["load_datasets", "Datasets", "TrainingBatches", "EvaluationBatches", "InMemoryTrainBatches",
           "InMemoryTestBatches", "TrainBatches", "TestBatches", "DatasetUnavailable", "DATASETS", "Split",
           "augment", "default_data_dir", "Normalize", "augment_and_mix", "mixup_pairs", "DataError", "BadExample",
           "CIFAR_MEAN", "CIFAR_STD", "MNIST_MEAN", "MNIST_STD"]
