"""Training on several devices and machines with ``tf.distribute``.

* ``mirrored``: ``MirroredStrategy``, all GPUs of one host, through Keras ``fit``.
* ``multiworker``: ``MultiWorkerMirroredStrategy`` across hosts, configured by ``TF_CONFIG``.
  Keras 3 ``fit`` is broken under it (keras-team/keras#20585), so this path is a custom training
  loop (:func:`fit_custom_loop`) over the same model, loss, weight maps and dataset.

``batch_size`` is per replica: the global batch is ``batch_size x replicas``, and the learning
rate is used as given (scale it yourself for large global batches, e.g. linearly).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .backend import keras, tf
from .config import STRATEGIES


def check_tf_config():
    """The parsed ``TF_CONFIG`` of a multi-worker run, or a ``ValueError`` saying what is wrong."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError("--strategy multiworker needs TF_CONFIG, e.g. "
                         '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}} (see examples/multiworker)')
    try:
        tf_config = json.loads(text)
        workers = tf_config["cluster"]["worker"]
        task = tf_config["task"]
        index = int(task["index"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"TF_CONFIG must be JSON with cluster.worker and task.type/index: "
                         f"{err!r} in {text[:200]}") from None
    if task.get("type") == "worker" and not 0 <= index < len(workers):
        raise ValueError(f"TF_CONFIG task index {index} is not in 0..{len(workers) - 1}")
    return tf_config


def make_strategy(name="default"):
    """A ``tf.distribute`` strategy by name. Create it first thing: multi-worker collectives
    must be configured before TensorFlow runs any op."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def is_multiworker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy):
    """Whether this process writes the model folder (worker 0, or the only process)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not is_multiworker(strategy) or resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def writable_path(path, chief):
    """``path`` on the chief; a throw-away twin elsewhere. Saving is collective under
    ``MultiWorkerMirroredStrategy``, so every worker saves, but only the chief's copy stays."""
    if chief:
        return Path(path)
    return Path(tempfile.mkdtemp(prefix="unet-tf-worker-")) / Path(path).name


def fit_custom_loop(model, optimizer, dataset, strategy, epochs, steps_per_epoch, on_epoch_end,
                    initial_epoch=0, verbose=True):
    """Train ``model`` with ``strategy.run`` over ``(x, y, w)`` batches of the global size.

    The loss per replica is the weighted pixel cross-entropy summed over its pixels divided by
    the pixels of the *global* batch, so the all-reduced gradient equals the single-device
    gradient of the whole batch (Keras' ``sum_over_batch_size`` with sample weights).
    ``on_epoch_end(epoch, logs)`` gets ``{"loss": mean of the epoch's step losses}``.
    """
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(x, y, w):
        global_pixels = tf.cast(tf.size(y) * strategy.num_replicas_in_sync, tf.float32)
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_sum(cross_entropy(y, logits, sample_weight=w)) / global_pixels
            scaled_loss = optimizer.scale_loss(loss) if scaled else loss
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        losses = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    iterator = iter(strategy.experimental_distribute_dataset(dataset.with_options(options)))
    for epoch in range(initial_epoch, epochs):
        losses = [float(train_step(iterator)) for _ in range(steps_per_epoch)]
        logs = {"loss": float(np.mean(losses))}
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4f}", flush=True)
        on_epoch_end(epoch, logs)
        if getattr(model, "stop_training", False):  # e.g. the divergence guard
            break


class Backup:
    """Model and optimizer state after each epoch, so a restarted multi-worker run resumes.

    Every worker saves (the collective needs them all); only the chief's copy is kept.
    """

    def __init__(self, folder, model, optimizer, chief):
        self.folder, self.chief = Path(folder), chief
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch)
        directory = self.folder if chief else writable_path(self.folder, False)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=1)

    def restore(self):
        """The first epoch still to run (0 without a backup)."""
        latest = tf.train.latest_checkpoint(str(self.folder))
        if latest:
            self.checkpoint.restore(latest)
        return int(self.epoch.numpy())

    def save(self, epochs_done):
        self.epoch.assign(epochs_done)
        self.manager.save()

    def finish(self):
        shutil.rmtree(self.manager.directory, ignore_errors=True)
