"""The reference's training example: Gin command line, CIFAR/MNIST data on the device, training loop."""
import os

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
