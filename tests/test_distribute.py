"""tf.distribute: mirrored with Keras fit, two workers on localhost with the custom loop."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from unet_tf.backend import keras, tf   # TensorFlow as unet_tf loads it
from unet_tf import build_unet, make_dataset
from unet_tf.distribute import fit_custom_loop
from unet_tf.losses import weighted_pixel_loss
from unet_tf.tiling import predict_tiled
from unet_tf.config import TrainConfig
from unet_tf.model_folder import load_model_folder
from unet_tf.training import train


def tiny(tmp_path, **settings):
    return TrainConfig(out=str(tmp_path / "model"), tile_size=188, depth=4, filters=4, epochs=2,
                       steps_per_epoch=2, batch_size=2, val_split=0.0, **settings)


def losses(folder):
    rows = (folder / "history.csv").read_text().splitlines()
    column = rows[0].split(",").index("loss")
    return [float(row.split(",")[column]) for row in rows[1:]]


def test_mirrored_trains_with_keras_fit_like_one_device(tmp_path, sample):
    image, instances = sample[0][:200, :200], sample[1][:200, :200]
    model = train(tiny(tmp_path / "mirrored", strategy="mirrored"), [image], [instances],
                  verbose=0)
    train(tiny(tmp_path / "default"), [image], [instances], verbose=0)
    config = json.loads((tmp_path / "mirrored" / "model" / "config.json").read_text())
    assert config["distribution"]["strategy"] == "mirrored"
    assert config["distribution"]["global_batch"] == 2 * config["distribution"]["replicas"]
    if config["distribution"]["replicas"] == 1:   # CPU: the same computation as one device
        np.testing.assert_allclose(losses(tmp_path / "mirrored" / "model"),
                                   losses(tmp_path / "default" / "model"), rtol=1e-4)
    assert predict_tiled(model, image[:50, :60], output="labels").shape == (50, 60)


def test_custom_loop_and_fit_give_the_same_loss_for_one_step(sample):
    image, instances = sample[0][:250, :250], sample[1][:250, :250]
    batch = next(iter(make_dataset([image], [instances], tile_size=188, depth=4, batch_size=2,
                                   seed=3)))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        models.append(build_unet(depth=4, filters=4, dropout=0.0))
    models[0].compile(keras.optimizers.SGD(0.01), weighted_pixel_loss())
    fit_loss = models[0].fit(data, epochs=1, steps_per_epoch=1, verbose=0,
                             shuffle=False).history["loss"][0]
    logged = {}
    fit_custom_loop(models[1], keras.optimizers.SGD(0.01), data, tf.distribute.get_strategy(),
                    epochs=1, steps_per_epoch=1, on_epoch_end=lambda e, logs: logged.update(logs),
                    verbose=False)
    assert logged["loss"] == pytest.approx(fit_loss, rel=1e-5)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):   # the same update too
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_multiworker_without_tf_config_is_refused(tmp_path, sample, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        train(tiny(tmp_path, strategy="multiworker"), [sample[0]], [sample[1]])
    with pytest.raises(ValueError, match="strategy must be one of"):
        tiny(tmp_path, strategy="tpu").validate()


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_localhost_train_in_step_and_only_the_chief_writes(tmp_path, sample):
    from unet_tf.io import write_image
    write_image(tmp_path / "images" / "a.tif", sample[0][:200, :200])
    write_image(tmp_path / "masks" / "a.tif", sample[1][:200, :200])
    workers = [f"localhost:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "unet_tf.cli", "train", "--images", str(tmp_path / "images"),
             "--masks", str(tmp_path / "masks"), "--out", str(tmp_path / f"out{index}"),
             "--tile-size", "188", "--depth", "4", "--filters", "4", "--epochs", "3",
             "--steps-per-epoch", "2", "--batch-size", "1", "--val-split", "0",
             "--strategy", "multiworker"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    losses = [[line for line in out.splitlines() if line.startswith("epoch ")] for out, _ in outputs]
    assert len(losses[0]) == 3 and losses[0] == losses[1]       # one all-reduced trajectory
    assert not (tmp_path / "out1").exists()                     # worker 1 wrote nothing
    assert sorted(p.name for p in (tmp_path / "out0").iterdir()) == [
        "config.json", "history.csv", "model.keras"]
    config = json.loads((tmp_path / "out0" / "config.json").read_text())
    assert config["distribution"]["replicas"] == 2 and config["distribution"]["global_batch"] == 2
    model, _ = load_model_folder(tmp_path / "out0")
    assert predict_tiled(model, sample[0][:60, :70], output="labels").shape == (60, 70)


def test_mixed_precision_computes_in_float16_and_keeps_logits_float32(tmp_path, sample):
    data = [sample[0][:200, :200]], [sample[1][:200, :200]]
    model = train(tiny(tmp_path / "mixed", mixed_precision=True), *data, verbose=0)
    assert model.get_layer("down0_conv1").dtype_policy.name == "mixed_float16"
    assert model.get_layer("logits").dtype_policy.name == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"   # restored afterwards
    train(tiny(tmp_path / "float32"), *data, verbose=0)
    # the same function in half precision: the first epoch's loss agrees to float16 rounding
    mixed, full = losses(tmp_path / "mixed" / "model"), losses(tmp_path / "float32" / "model")
    assert np.isfinite(mixed).all() and mixed[0] == pytest.approx(full[0], rel=0.02)


@pytest.mark.slow
def test_a_killed_multiworker_run_resumes_from_the_chiefs_backup(tmp_path, sample):
    import signal
    import time
    from unet_tf.io import write_image
    write_image(tmp_path / "images" / "a.tif", sample[0][:200, :200])
    write_image(tmp_path / "masks" / "a.tif", sample[1][:200, :200])
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {"cluster": {"worker": [f"localhost:{free_ports(1)[0]}"]},
         "task": {"type": "worker", "index": 0}}))
    args = [sys.executable, "-m", "unet_tf.cli", "train", "--images", str(tmp_path / "images"),
            "--masks", str(tmp_path / "masks"), "--out", str(tmp_path / "m"), "--tile-size",
            "188", "--depth", "4", "--filters", "4", "--epochs", "10", "--steps-per-epoch", "6",
            "--val-split", "0", "--strategy", "multiworker"]
    history = tmp_path / "m" / "history.csv"
    epochs = lambda: [int(row.split(",")[0]) for row in history.read_text().split("\n")[1:-1]]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if history.exists() and len(epochs()) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode(errors="replace")[-3000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = epochs()
    assert 3 <= len(done) < 10 and (tmp_path / "m" / "backup").is_dir()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = [int(line.split()[1].split("/")[0]) for line in rerun.stdout.splitlines()
               if line.startswith("epoch ")]
    assert resumed[0] > 1 and resumed[-1] == 10          # went on from the backup, not from 1
    assert epochs()[-1] == 9 and not (tmp_path / "m" / "backup").exists()
    load_model_folder(tmp_path / "m")
