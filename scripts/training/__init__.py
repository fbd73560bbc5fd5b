"""The release path: data, splits, augmentation, networks, training, export, quantisation, evaluation."""
