import csv
import json

import numpy as np
import pytest

from unet_tf.backend import keras   # TensorFlow as unet_tf loads it
from unet_tf.config import TrainConfig
from unet_tf.model_folder import load_model_folder
from unet_tf.training import split_images, train


def tiny_config(out, **changes):
    settings = dict(out=str(out), tile_size=124, depth=3, filters=4, dropout=0.0, epochs=2,
                    steps_per_epoch=2, batch_size=2, optimizer="adam", learning_rate=1e-3,
                    val_split=0.5, seed=0)
    return TrainConfig(**{**settings, **changes})


def quarters(sample):
    image, instances = sample
    cuts = [(slice(0, 256), slice(0, 256)), (slice(256, 512), slice(256, 512))]
    return [image[c] for c in cuts], [instances[c] for c in cuts]


def test_config_json_round_trip():
    config = TrainConfig(tile_size=252, class_names=["bg", "cell"], early_stopping=3)
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_dict({"tile": 3})


def test_validate_names_the_bad_setting():
    with pytest.raises(ValueError, match="input 570 is not valid"):
        TrainConfig(tile_size=570).validate()
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0).validate()


def test_split_keeps_whole_images():
    train_idx, val_idx = split_images(10, 0.2, seed=0)
    assert len(val_idx) == 2 and sorted(train_idx + val_idx) == list(range(10))
    assert split_images(1, 0.2, 0) == ([0], [])


def test_train_writes_a_complete_model_folder(tmp_path, sample):
    images, masks = quarters(sample)
    out = tmp_path / "model"
    model = train(tiny_config(out), images, masks, names=["a", "b"], verbose=0)
    assert {p.name for p in out.iterdir()} == {"model.keras", "config.json", "history.csv", "logs"}
    config = json.loads((out / "config.json").read_text())
    assert config["tile_size"] == 124 and config["output_size"] == 84
    assert config["architecture"]["depth"] == 3 and config["normalization"]["method"] == "percentile"
    assert config["data"]["images"] == 2 and len(config["data"]["validation"]) == 1
    assert config["format_version"] == 2 and "weight_map" not in config   # training holds it
    assert config["training"]["weight_map"] and config["training"]["border_sigma"] == 5.0
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"] and "val_loss" in rows[0]
    loaded, loaded_config = load_model_folder(out)
    x = np.random.default_rng(0).normal(size=(1, 124, 124, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(FileExistsError, match="already holds a trained model"):
        train(tiny_config(out), images, masks, verbose=0)


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill")


def test_interrupted_run_resumes_from_the_saved_epoch(tmp_path, sample):
    images, masks = quarters(sample)
    out = tmp_path / "model"
    config = tiny_config(out, epochs=4)
    with pytest.raises(KeyboardInterrupt):
        train(config, images, masks, callbacks=[Interrupt()], verbose=0)
    assert (out / "backup").is_dir() and (out / "model.keras").exists()

    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    train(config, images, masks, callbacks=[Record()], verbose=0)
    assert seen == [2, 3]                      # resumed, not restarted
    with open(out / "history.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2", "3"]
    assert not (out / "backup").exists()       # a finished run cleans up its backup


def test_load_model_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_model_folder(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="model.keras is missing"):
        load_model_folder(tmp_path / "m")
