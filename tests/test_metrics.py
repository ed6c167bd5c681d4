import numpy as np
import pytest

from unet_tf.metrics import (class_iou, evaluate, foreground_iou, match_instances, pixel_error,
                             rand_error)


def three_cells():
    truth = np.zeros((20, 30), np.int32)
    truth[2:8, 2:8], truth[2:8, 8:14], truth[12:18, 2:8] = 1, 2, 3
    return truth


def test_identical_masks_are_perfect():
    truth = three_cells()
    metrics = evaluate(truth, truth)
    assert metrics["foreground_iou"] == 1 and metrics["pixel_error"] == 0
    assert metrics["rand_error"] == 0 and metrics["f1"] == 1 and metrics["mean_ap"] == 1
    assert metrics["merged"] == metrics["split"] == 0


def test_one_merged_pair():
    truth = three_cells()
    prediction = np.zeros_like(truth)
    prediction[2:8, 2:14], prediction[12:18, 2:8] = 5, 9    # cells 1 and 2 merged
    m = match_instances(truth, prediction)
    assert (m["true"], m["predicted"], m["merged"], m["split"]) == (3, 2, 1, 0)
    # Only cell 3 matches (the merged blob has IoU exactly 0.5 with each, not above 0.5).
    assert m["f1"] == pytest.approx(2 * 1 / (3 + 2))
    assert m["precision"] == pytest.approx(1 / 2) and m["recall"] == pytest.approx(1 / 3)
    assert foreground_iou(truth, prediction) == 1.0          # the pixels are all right
    assert rand_error(truth, prediction) == 0.0              # touching cells: one component


def test_split_cell_and_binary_prediction():
    truth = three_cells()
    prediction = (truth > 0).astype(np.uint8) * 255           # binary: components
    prediction[12:18, 5] = 0                                  # cut cell 3 in two
    m = match_instances(truth, prediction)
    assert m["split"] == 1 and m["predicted"] == 3            # {1,2} blob + two halves


def test_semantic_metrics_on_known_values():
    truth = np.array([[0, 0, 1, 1]])
    prediction = np.array([[0, 1, 1, 0]])
    assert foreground_iou(truth, prediction) == pytest.approx(1 / 3)
    assert pixel_error(truth, prediction) == pytest.approx(0.5)
    np.testing.assert_allclose(class_iou(truth, prediction), [1 / 3, 1 / 3])


def test_rand_error_known_value():
    truth = np.array([[1, 1, 0, 1]])                 # segments {0,1}, {2}, {3}
    prediction = np.array([[1, 1, 1, 1]])            # one segment
    # pairs: 6; agreements: (0,1) together in both = 1 of 6 -> Rand index 1/6
    assert rand_error(truth, prediction) == pytest.approx(1 - 1 / 6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="truth has shape"):
        foreground_iou(np.zeros((3, 3)), np.zeros((3, 4)))


def test_volumes_are_scored_by_3d_objects():
    """A ZYX volume: an object is one label across its slices, its IoU counted in voxels."""
    z, y, x = np.ogrid[:20, :40, :40]

    def ball(centre, radius):
        return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2

    truth = np.zeros((20, 40, 40), np.int32)
    truth[ball((6, 10, 10), 5)], truth[ball((12, 28, 28), 6)] = 1, 2
    truth[ball((14, 10, 30), 4)] = 3
    prediction = np.zeros_like(truth)
    prediction[ball((6, 11, 10), 5)] = 5                  # shifted by a voxel: IoU ~0.8
    prediction[ball((12, 28, 28), 6) | ball((14, 10, 30), 4)] = 9   # 2 and 3 merged
    shifted = (truth == 1) & (prediction == 5)
    iou = shifted.sum() / ((truth == 1) | (prediction == 5)).sum()
    assert 0.5 < iou < 0.95
    scores = evaluate(truth, prediction)
    assert (scores["true"], scores["predicted"], scores["merged"]) == (3, 2, 1)
    # the merged object matches ball 2 (the larger) only where their IoU is above 0.5
    big = ((truth == 2) & (prediction == 9)).sum() / ((truth == 2) | (prediction == 9)).sum()
    tp = 1 + (big > 0.5)
    assert scores["f1"] == pytest.approx(2 * tp / 5)
    # slices of a 3-D object are one object, not one per slice as 2-D scoring would count
    assert evaluate(truth, truth)["true"] == 3
    binary = evaluate(truth > 0, truth > 0)
    assert binary["true"] == 3 and binary["f1"] == 1.0
