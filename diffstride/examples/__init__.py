"""The reference's training example: Gin command line, CIFAR/MNIST data on the device, training loop."""
