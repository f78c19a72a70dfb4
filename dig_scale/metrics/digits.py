"""Judging samples of the digits demo: a scikit-learn MLP trained on the real digits (as the demo
dataset renders them) labels the samples, and its hidden layer is the feature space of a Fréchet
distance between samples and held-out real digits.

Accuracy on samples of class c is the fraction the classifier labels c: chance is 10%. The
distance between the real training and held-out digits is reported beside it as the floor a
perfect generator would reach with this many samples.
"""
from __future__ import annotations

import numpy as np

from dig_scale.data.demo import DEMO_NUM_CLASSES, digit_images

from .frechet import frechet_distance, gaussian_statistics

HIDDEN_UNITS = 64
HELD_OUT = 0.25


def _grey(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) or (N, 3, H, W) uint8 -> (N, H*W) float in [0, 1] (channel mean)."""
    channel_axis = 3 if images.shape[-1] == 3 else 1
    return images.astype(np.float64).mean(axis=channel_axis).reshape(len(images), -1) / 255.0


class DigitClassifier:
    """An MLP on the real digits at `resolution` px, trained on 75% of them (fixed split)."""

    def __init__(self, resolution: int, seed: int = 0):
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier

        images, labels = digit_images(resolution)
        x = _grey(images)
        self.x_train, self.x_test, y_train, y_test = train_test_split(
            x, labels, test_size=HELD_OUT, random_state=seed, stratify=labels)
        self.mlp = MLPClassifier(hidden_layer_sizes=(HIDDEN_UNITS,), max_iter=1000, random_state=seed)
        self.mlp.fit(self.x_train, y_train)
        self.held_out_accuracy = float(self.mlp.score(self.x_test, y_test))
        self.resolution = resolution

    def features(self, x: np.ndarray) -> np.ndarray:
        """The hidden layer (ReLU) of the MLP."""
        return np.maximum(x @ self.mlp.coefs_[0] + self.mlp.intercepts_[0], 0)

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> dict:
        """Class-conditional accuracy and Fréchet distance of uint8 sample images (N, H, W, 3)."""
        if images.shape[1:3] != (self.resolution, self.resolution):
            raise ValueError(f"samples are {images.shape[1:3]}, the classifier was trained at {self.resolution} px")
        if len(images) < 2 or len(images) != len(labels):
            raise ValueError(f"expected at least 2 samples with one label each, got {len(images)} and {len(labels)}")
        x = _grey(images)
        predicted = self.mlp.predict(x)
        per_class = {str(c): float(np.mean(predicted[labels == c] == c)) for c in range(DEMO_NUM_CLASSES)
                     if np.any(labels == c)}
        real = gaussian_statistics(self.features(self.x_test))
        return {
            "num_samples": len(images),
            "accuracy": float(np.mean(predicted == labels)),
            "per_class_accuracy": per_class,
            "frechet_distance": frechet_distance(*gaussian_statistics(self.features(x)), *real),
            "real_frechet_distance": frechet_distance(*gaussian_statistics(self.features(self.x_train)), *real),
            "classifier_held_out_accuracy": self.held_out_accuracy,
            "feature_space": f"hidden layer ({HIDDEN_UNITS} ReLU units) of an MLP trained on 75% of the real digits",
        }
