"""The model folder's config.json as one typed object: every format version reads, a folder
written by unet-tf 0.4.0 predicts as it did then, and a broken config says what is wrong."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from unet_tf import UNet
from unet_tf.config import ADDED, TrainConfig
from unet_tf.model_folder import (FORMAT_VERSION, Architecture, ModelConfig, read_config,
                                  update_config)

DATA = Path(__file__).parent / "data"
FORMAT1 = DATA / "folder_format1"        # made by tests/data/make_folder_format1.py at 0.4.0
REGION = (slice(0, 160), slice(384, 512))


def test_a_folder_written_by_0_4_predicts_as_it_did_then(sample):
    unet = UNet.from_folder(FORMAT1)
    expected = np.load(DATA / "folder_format1_expected.npz")
    crop = sample[0][REGION]
    np.testing.assert_allclose(unet.predict(crop, tile_size=124)[..., 1],
                               expected["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(unet.segment(crop, tile_size=124), expected["labels"])
    # its tuned post-processing and training settings came through the reader
    assert unet.postprocessing == {"target": "foreground", "threshold": 0.7, "split": 1,
                                   "min_size": 50, "max_hole": 438}
    assert unet.config.training.border_sigma == 5.0 and unet.config.output_size == 84


def test_reading_format1_then_writing_gives_the_current_format(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(FORMAT1, folder)
    old = json.loads((folder / "config.json").read_text())
    config = update_config(folder, sampling={"note": "rewritten"})
    new = json.loads((folder / "config.json").read_text())
    assert old["format_version"] == 1 and new["format_version"] == FORMAT_VERSION == 2
    assert "weight_map" in old and "weight_map" not in new
    for key in ("architecture", "tile_size", "output_size", "class_names", "normalization",
                "postprocessing", "plan", "data", "created", "unet_tf_version"):
        assert new[key] == old[key], key     # what the kit in export/ reads is unchanged
    assert new["training"] == {**ADDED, **old["training"]}   # settings added since: defaults
    assert read_config(folder) == config and config.sampling == {"note": "rewritten"}


def test_to_dict_and_from_dict_round_trip():
    config = ModelConfig.for_run(TrainConfig(tile_size=252, depth=4, target="boundary"),
                                 {"channels": 2, "images": 3}, plan={"fingerprint": {"x": 1}})
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.architecture == Architecture(4, 64, "transpose", 0.5, 3, 2)
    assert again.class_names == ("background", "interior", "boundary")
    assert again.target == "boundary" and again.fingerprint == {"x": 1}


def test_a_folder_from_before_tuning_labels_as_it_did():
    values = json.loads((FORMAT1 / "config.json").read_text())
    del values["postprocessing"]
    assert ModelConfig.from_dict(values).postprocessing_settings == {
        "target": "foreground", "threshold": 0.5, "split": None, "min_size": 0, "max_hole": 0}
    values["architecture"]["num_classes"] = 4
    values["class_names"] = ["a", "b", "c", "d"]
    assert ModelConfig.from_dict(values).postprocessing_settings == {"target": "classes"}


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(format_version=99), r"unsupported format_version 99, .* reads \[1, 2\]"),
    (lambda c: c.pop("tile_size"), r"lacks \['tile_size'\]"),
    (lambda c: c["architecture"].update(depth="3"), "architecture.depth must be an integer"),
    (lambda c: c["architecture"].update(width=3), "broken entry"),
    (lambda c: c.update(tile_size=125), "tile_size 125"),
    (lambda c: c.update(class_names=["one"]), "class_names must name 2 classes"),
    (lambda c: c.update(normalization={"method": "zscore"}), "normalization is not one"),
    (lambda c: c["postprocessing"].update(target="blobs"), "postprocessing.target must be"),
])
def test_a_broken_config_names_the_file_and_the_entry(change, message):
    values = json.loads((FORMAT1 / "config.json").read_text())
    change(values)
    with pytest.raises((ValueError, TypeError), match=message) as caught:
        ModelConfig.from_dict(values, source="m/config.json")
    assert str(caught.value).startswith("m/config.json")
