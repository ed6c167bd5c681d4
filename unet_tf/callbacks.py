"""Keras callbacks of a training run: the atomic best-model checkpoint and TensorBoard
pictures of the predictions."""

import csv
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .io import write_atomically


def best_in_history(history, monitor):
    """The lowest ``monitor`` value in a history.csv (``inf`` without one)."""
    if history is None or not Path(history).exists():
        return np.inf
    with open(history) as f:
        values = [float(row[monitor]) for row in csv.DictReader(f) if row.get(monitor)]
    return min(values, default=np.inf)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model to ``path`` (atomically) whenever ``monitor`` reaches a new minimum."""

    def __init__(self, path, monitor, history=None):
        super().__init__()
        self.path, self.monitor = Path(path), monitor
        self.best = best_in_history(history, monitor)  # a resumed run keeps its best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best:
            self.best = value
            write_atomically(self.path, self.model.save)


class PredictionImages(keras.callbacks.Callback):
    """Write a few tiles with their labels and predicted foreground probability to TensorBoard."""

    def __init__(self, log_dir, x, y, every=1):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "images"))
        self.x, self.y, self.every = x, y, every

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every:
            return
        probabilities = tf.nn.softmax(self.model(self.x, training=False))[..., 1:2]
        out = probabilities.shape[1]
        start = (self.x.shape[1] - out) // 2
        image = self.x[:, start:start + out, start:start + out, :1]
        image = (image - tf.reduce_min(image)) / (tf.reduce_max(image) - tf.reduce_min(image) + 1e-6)
        labels = tf.cast(self.y[..., None], tf.float32)
        with self.writer.as_default():
            tf.summary.image("image | labels | foreground probability",
                             tf.concat([image, labels, probabilities], axis=2), step=epoch)


