import warnings

import numpy as np
import pytest

from unet_tf.weightmaps import class_weight_map, weight_map, weight_map_reference


def touching_cells(seed, size=96, cells=25):
    """Random rectangles painted over each other: many share borders or touch."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint16)
    for label in range(1, cells + 1):
        y, x = rng.integers(0, size - 8, 2)
        h, w = rng.integers(4, 14, 2)
        mask[y:y + h, x:x + w] = label
    return mask


def test_exact_against_brute_force_on_the_real_mask(sample):
    _, instances = sample
    fast = weight_map(instances)
    np.testing.assert_array_less(np.abs(fast - weight_map_reference(instances)), 1e-5)
    assert fast.dtype == np.float32 and fast.shape == instances.shape


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("w0, sigma", [(10.0, 5.0), (50.0, 6.0), (10.0, 2.0)])
def test_exact_against_brute_force_on_random_touching_cells(seed, w0, sigma):
    mask = touching_cells(seed)
    fast = weight_map(mask, w0=w0, sigma=sigma)
    reference = weight_map_reference(mask, w0=w0, sigma=sigma)
    assert np.abs(fast - reference).max() <= 1e-5


def test_two_squares_two_pixels_apart_peak_on_the_gap():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:18] = 1
    mask[10:30, 20:33] = 2          # columns 18 and 19 are the 2-px gap
    w = weight_map(mask, w0=10.0, sigma=5.0, class_weights=None)
    gap = w[10:30, 18:20]
    assert np.unravel_index(np.argmax(w), w.shape)[1] in (18, 19)
    # Gap pixels are 1 px from one square and 2 px from the other.
    np.testing.assert_allclose(gap, 1 + 10 * np.exp(-(1 + 2) ** 2 / (2 * 5 ** 2)), rtol=1e-6)
    assert np.all(w[mask > 0] == 1)
    assert w[0, 0] < 1.01            # far from both: class weight only


def test_balanced_class_weights():
    foreground = np.zeros((10, 10), bool)
    foreground[:2] = True            # 20 % foreground
    w = class_weight_map(foreground)
    assert w[0, 0] == pytest.approx(100 / (2 * 20)) and w[9, 9] == pytest.approx(100 / (2 * 80))
    assert np.all(class_weight_map(foreground, (1, 3))[:2] == 3)
    assert np.all(class_weight_map(foreground, {0: 0.5, 1: 2})[5:] == 0.5)


def test_binary_mask_is_split_into_components():
    mask = np.zeros((30, 30), np.uint8)
    mask[5:15, 5:14] = 255
    mask[5:15, 15:25] = 255          # two blobs, one pixel apart, same value
    w = weight_map(mask, class_weights=None)
    assert w[10, 14] == pytest.approx(1 + 10 * np.exp(-4 / 50))


@pytest.mark.parametrize("mask", [
    np.zeros((32, 32), np.int32),                                  # empty
    np.pad(np.ones((8, 8), np.int64), 12),                         # a single cell
    np.full((32, 32), 7, np.uint8),                                # all foreground
])
def test_degenerate_masks_are_defined_without_warnings(mask):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = weight_map(mask)
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    np.testing.assert_allclose(w, weight_map_reference(mask), atol=1e-6)


@pytest.mark.parametrize("kwargs, error", [
    ({"w0": -1}, "w0 must be"), ({"sigma": 0}, "sigma must be"),
    ({"class_weights": "auto"}, "class_weights must be"), ({"class_weights": (1,)}, "two finite"),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        weight_map(touching_cells(0), **kwargs)


def test_bad_masks():
    with pytest.raises(ValueError, match="needs its voxel size"):
        weight_map(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        weight_map(np.zeros((2, 4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="integer labels"):
        weight_map(np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="labels >= 0"):
        weight_map(np.full((4, 4), -1))


def touching_balls(shape=(24, 56, 56), spacing=(1.0, 0.25, 0.25), count=12, seed=0):
    """Instance labels of balls (4 um radius in physical units) on an anisotropic grid, the
    later ones drawn over the earlier, so many touch."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)],
                                indexing="ij"), axis=-1)
    labels = np.zeros(shape, np.int32)
    extent = np.array(shape) * spacing
    for label in range(1, count + 1):
        centre = rng.uniform(0.15, 0.85, 3) * extent
        labels[np.linalg.norm(grid - centre, axis=-1) < rng.uniform(2.0, 4.0)] = label
    return labels


@pytest.mark.parametrize("spacing", [(1.0, 0.25, 0.25), (0.5, 0.5, 0.5)])
def test_a_volumes_weight_map_is_exact_against_brute_force_with_its_voxel_size(spacing):
    labels = touching_balls(spacing=spacing)
    assert len(np.unique(labels)) > 8
    fast = weight_map(labels, sigma=1.25, spacing=spacing)        # sigma in um, as the spacing
    reference = weight_map_reference(labels, sigma=1.25, spacing=spacing)
    assert fast.shape == labels.shape and fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference, atol=1e-5)
    assert fast.max() > 5      # the border term is there, between touching balls


def test_the_voxel_size_sets_the_distances():
    """Two slabs 2 voxels apart along z: at 1 um per slice the gap is 2 um wide, at 0.25 um
    only 0.5 um, so its border term (sigma 1 um) is larger."""
    labels = np.zeros((8, 6, 6), np.int32)
    labels[:3], labels[5:] = 1, 2
    coarse = weight_map(labels, sigma=1.0, class_weights=None, spacing=(1.0, 1.0, 1.0))
    fine = weight_map(labels, sigma=1.0, class_weights=None, spacing=(0.25, 1.0, 1.0))
    assert fine[3:5].min() > coarse[3:5].max() > 1
    np.testing.assert_allclose(coarse[3, 0, 0], 1 + 10 * np.exp(-(1 + 2) ** 2 / 2), rtol=1e-5)


def test_a_volume_without_its_voxel_size_is_refused():
    with pytest.raises(ValueError, match="needs its voxel size"):
        weight_map(np.zeros((4, 8, 8), np.int32))
    with pytest.raises(ValueError, match="must be a 3-D"):
        weight_map(np.zeros((8, 8), np.int32), spacing=(1, 1, 1))
