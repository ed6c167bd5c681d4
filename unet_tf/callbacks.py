"""Keras callbacks of a training run: the divergence guard, the atomic best-model checkpoint
and TensorBoard pictures of the predictions."""

import csv
from pathlib import Path

import numpy as np

from .backend import keras, tf
from .io import write_atomically


def best_in_history(history, monitor):
    """The lowest ``monitor`` value in a history.csv (``inf`` without one)."""
    if history is None or not Path(history).exists():
        return np.inf
    with open(history) as f:
        values = [float(row[monitor]) for row in csv.DictReader(f) if row.get(monitor)]
    return min(values, default=np.inf)


class TrainingDiverged(ValueError):
    """The loss became non-finite or exploded; the message says what to change."""


class DivergenceGuard(keras.callbacks.Callback):
    """Stop training when the loss is not finite (checked every step) or when an epoch's
    ``loss``/``val_loss`` exceeds ``factor`` times its lowest value so far (an explosion that
    stays finite, e.g. a validation loss of 1e15). :attr:`diverged` then says what happened;
    :func:`unet_tf.train` raises :class:`TrainingDiverged` with it after ``fit`` returns."""

    def __init__(self, factor=1e3):
        super().__init__()
        self.factor, self.diverged, self.lowest = factor, None, {}

    def _stop(self, message):
        self.diverged = message
        self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)) and self.diverged is None:
            self._stop(f"the loss became {float(loss)} at step {batch + 1} of epoch "
                       f"{self.epoch + 1}")
        elif loss is not None and "loss" not in self.lowest:
            # the untrained net's loss: an explosion within the first epoch is measured
            # against it (lr 1e4 reached a finite 1.5e5 in epoch 1 on an AVX-512 machine)
            self.lowest["loss"] = float(loss)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        for name in ("loss", "val_loss"):
            value = (logs or {}).get(name)
            if value is None or self.diverged is not None:
                continue
            value, lowest = float(value), self.lowest.get(name, np.inf)
            if not np.isfinite(value):
                self._stop(f"{name} became {value} in epoch {epoch + 1}")
            elif value > self.factor * lowest:
                self._stop(f"{name} exploded to {value:.3g} in epoch {epoch + 1} (lowest so far "
                           f"{lowest:.3g})")
            else:
                self.lowest[name] = min(lowest, value)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model to ``path`` (atomically) whenever ``monitor`` reaches a new minimum,
    unless ``guard`` (a :class:`DivergenceGuard` run before it) saw the epoch diverge."""

    def __init__(self, path, monitor, history=None, guard=None):
        super().__init__()
        self.path, self.monitor, self.guard = Path(path), monitor, guard
        self.best = best_in_history(history, monitor)  # a resumed run keeps its best

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.diverged:
            return
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
        x, y = self.x, self.y
        if len(x.shape) == 5:   # volume tiles: the middle slice of the output
            middle = probabilities.shape[1] // 2
            x = x[:, (x.shape[1] - probabilities.shape[1]) // 2 + middle]
            probabilities, y = probabilities[:, middle], y[:, middle]
        (top, height), (left, width) = [((n - o) // 2, o) for n, o in
                                        zip(x.shape[1:3], probabilities.shape[1:3])]
        image = x[:, top:top + height, left:left + width, :1]
        image = (image - tf.reduce_min(image)) / (tf.reduce_max(image) - tf.reduce_min(image) + 1e-6)
        labels = tf.cast(y[..., None], tf.float32)
        with self.writer.as_default():
            tf.summary.image("image | labels | foreground probability",
                             tf.concat([image, labels, probabilities], axis=2), step=epoch)


