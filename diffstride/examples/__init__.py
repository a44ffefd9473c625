"""The reference's training example: Gin command line, CIFAR/MNIST data on the device, training loop.

Importing it adds the packaged configs folder to Gin's search path, so that a config's
``include 'cifar10.gin'`` resolves from any working directory.
"""
import os

import gin

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
gin.add_config_file_search_path(CONFIGS_DIR)
