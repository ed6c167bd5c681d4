"""Instances from probabilities: touching objects split, specks dropped, holes filled, the
settings tuned on images with known objects; the export kit applies the same code."""

import numpy as np
import pytest

from unet_tf.data import boundary_labels
from unet_tf.instances import check_settings, fill_holes, label_instances
from unet_tf.metrics import match_instances
from unet_tf.instances import label_image
from unet_tf.postprocess import describe, tune

DISKS = [(60, 60, 25), (60, 105, 22), (140, 70, 18), (150, 104, 17), (50, 200, 12),
         (66, 218, 12), (150, 200, 28)]


def disks(shape=(200, 260), specs=DISKS):
    """Instance labels of (overlapping, hence touching) disks; later disks do not overwrite."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx, r) in enumerate(specs, 1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (labels == 0)] = k
    return labels


def as_probabilities(foreground, noise=0.0, seed=0):
    p = np.clip(np.asarray(foreground, np.float32) * 0.9 + 0.05
                + np.random.default_rng(seed).normal(0, noise, np.shape(foreground)), 0, 1)
    return np.stack([1 - p, p], -1).astype(np.float32)


def test_touching_disks_come_out_as_separate_objects():
    truth = disks()
    assert label_instances(as_probabilities(truth > 0)).max() < len(DISKS)   # merged without a split
    labels = label_instances(as_probabilities(truth > 0), {"split": 1.0})
    matching = match_instances(truth, labels)
    assert matching["true"] == matching["predicted"] == len(DISKS)
    assert matching["per_threshold"][0.9]["tp"] == len(DISKS)              # split on the necks
    assert matching["merged"] == matching["split"] == 0


def test_specks_below_the_size_are_removed_and_holes_filled():
    truth = disks()
    foreground = truth > 0
    foreground[5:8, 240:243] = True                    # a 9-pixel speck
    foreground[60, 60] = foreground[148:151, 200:203] = False   # holes of 1 and 9 pixels
    labels = label_instances(as_probabilities(foreground), {"split": 1.0, "min_size": 10,
                                                           "max_hole": 20})
    assert labels.max() == len(DISKS) and labels[6, 241] == 0
    assert labels[60, 60] > 0 and labels[149, 201] > 0
    assert labels.dtype == np.uint16 and set(np.unique(labels)) == set(range(len(DISKS) + 1))
    kept = label_instances(as_probabilities(foreground), {"min_size": 9})   # max_hole 0: none
    assert kept[6, 241] > 0 and kept[60, 60] == 0 and kept[149, 201] == 0


def test_fill_holes_keeps_background_that_reaches_the_border_and_large_holes():
    ring = np.zeros((30, 30), bool)
    ring[5:25, 5:25] = True
    ring[10:20, 10:20] = False                          # a 100-pixel hole
    ring[0:3, 0:30] = True                              # background above still reaches the border
    assert not fill_holes(ring, 99)[15, 15] and fill_holes(ring, 100)[15, 15]
    assert not fill_holes(ring, 100)[4, 15]


def test_the_boundary_target_grows_cells_from_their_interiors():
    truth = disks()
    classes = boundary_labels(truth)
    assert set(np.unique(classes)) == {0, 1, 2}
    assert (classes[truth == 0] == 0).all() and (classes[(truth > 0)] > 0).all()
    probabilities = np.eye(3, dtype=np.float32)[classes]
    labels = label_instances(probabilities, {"target": "boundary"})
    matching = match_instances(truth, labels)
    assert matching["predicted"] == len(DISKS) and matching["per_threshold"][0.95]["tp"] == len(DISKS)


def test_tuning_finds_the_split_and_the_smallest_size_on_noisy_probabilities():
    truth = disks()
    foreground = truth > 0
    rng = np.random.default_rng(3)
    for y, x in rng.integers(5, 190, (12, 2)):        # specks far from the disks
        if not foreground[y - 3:y + 3, x - 3:x + 3].any():
            foreground[y:y + 2, x:x + 2] = True
    probabilities = [as_probabilities(foreground, noise=0.1, seed=s) for s in range(2)]
    settings, report = tune(probabilities, [truth, truth])
    assert settings["split"] is not None and settings["min_size"] > 4
    assert report["f1_before"] < 0.8 and report["f1_after"] == 1.0
    assert "split at h" in describe(settings)


def test_label_image_for_classes():
    probabilities = np.random.default_rng(0).dirichlet(np.ones(3), (8, 9)).astype(np.float32)
    classes = label_image(probabilities, {"target": "classes"})
    np.testing.assert_array_equal(classes, probabilities.argmax(-1))
    assert classes.dtype == np.uint8


@pytest.mark.parametrize("settings, message", [
    ({"threshold": 1.5}, r"threshold must be in \(0, 1\)"),
    ({"split": 0}, "split must be None or h > 0"),
    ({"min_size": -1}, "min_size must be >= 0"),
    ({"target": "cells"}, "target must be one of"),
    ({"minsize": 3}, r"unknown post-processing settings \['minsize'\]"),
])
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        check_settings(settings)


def test_probabilities_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"the boundary target needs probabilities \(H, W, 3\)"):
        label_instances(np.zeros((4, 4, 2), np.float32), {"target": "boundary"})


def test_a_model_trained_on_bright_nuclei_finds_them_at_half_the_contrast(trained_folder, sample):
    """Every other held-out nucleus dimmed to half its contrast over the background (with the
    others unchanged, per-image normalisation cannot undo it): they are found as often as at
    full contrast. The gray-value augmentation (uneven gain, gamma, contrast) is what teaches it."""
    from scipy import ndimage as ndi
    from unet_tf import UNet
    image, instances = (a[:, 384:] for a in sample)
    background = np.median(image[instances == 0])
    dimmed_ids = np.unique(instances)[1::2]
    region = ndi.binary_dilation(np.isin(instances, dimmed_ids), iterations=2)
    dim = image.astype(np.float32)
    dim[region] = background + 0.5 * (dim[region] - background)
    unet = UNet.from_folder(trained_folder)

    def found(picture):
        labels = unet.segment(picture.astype(np.uint16))
        table = np.zeros((instances.max() + 1, labels.max() + 1), int)
        np.add.at(table, (instances.ravel(), labels.ravel()), 1)
        sizes_true, sizes_pred = table.sum(1), table.sum(0)
        iou = table / (sizes_true[:, None] + sizes_pred[None, :] - table + 1e-9)
        return {i for i in dimmed_ids if iou[i, 1:].max(initial=0) > 0.5}

    at_full, at_half = found(image), found(dim)
    assert len(at_full) >= 0.7 * len(dimmed_ids)
    assert len(at_half) >= len(at_full) - 2, (len(at_half), len(at_full), len(dimmed_ids))
