"""Elastic deformation of ZYX volumes (issue: volumes)."""

import numpy as np
import pytest

from unet_tf.augment import displacement_field_3d, elastic_deform_3d


def smooth(z, y, x):
    return np.sin(2 * np.pi * z / 40) * np.cos(2 * np.pi * y / 64) + np.sin(2 * np.pi * x / 50)


def test_a_smooth_volume_is_sampled_where_the_field_points():
    shape = (36, 60, 56)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    volume = smooth(z, y, x).astype(np.float32)
    deformed = elastic_deform_3d(volume, sigma=(2.0, 4.0, 4.0), rng=3)
    dz, dy, dx = displacement_field_3d(shape, sigma=(2.0, 4.0, 4.0), rng=3)
    assert np.abs(dz).max() > 1 and np.abs(dx).max() > 2           # it moved, in every axis
    # z moves by dz read at the in-plane displaced position (elastic_deform_3d's docstring)
    from scipy.ndimage import map_coordinates
    dz = map_coordinates(dz, [z, y + dy, x + dx], order=1, mode="nearest")
    expected = smooth(z + dz, y + dy, x + dx)
    # sources a voxel inside the faces (at them, the cubic reaches into the mirror)
    inside = ((z + dz >= 1) & (z + dz <= shape[0] - 2) & (y + dy >= 1)
              & (y + dy <= shape[1] - 2) & (x + dx >= 1) & (x + dx <= shape[2] - 2))
    assert inside.mean() > 0.5
    assert np.abs(deformed - expected)[inside].max() < 0.02         # seen: 0.011
    assert np.abs(volume - expected)[inside].max() > 0.3            # so not the identity


def test_labels_keep_their_values_and_follow_the_image():
    rng = np.random.default_rng(0)
    labels = np.zeros((20, 40, 40), np.uint16)
    labels[5:15, 10:30, 10:30] = 7
    labels[8:12, 15:25, 15:25] = 300
    volume = (labels > 0).astype(np.float32) + rng.normal(0, 0.01, labels.shape).astype(np.float32)
    image, warped = elastic_deform_3d(volume, labels, sigma=(1.5, 3.0, 3.0), rng=5)
    assert set(np.unique(warped)) <= {0, 7, 300} and warped.dtype == labels.dtype
    assert not np.array_equal(warped, labels)
    agree = (image > 0.5) == (warped > 0)
    assert agree.mean() > 0.98


def test_the_same_seed_gives_the_same_deformation_and_zero_sigma_the_identity():
    volume = np.random.default_rng(1).integers(0, 60000, (12, 30, 30)).astype(np.uint16)
    a, b = (elastic_deform_3d(volume, rng=9) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint16
    np.testing.assert_array_equal(elastic_deform_3d(volume, sigma=0.0, rng=9), volume)
    channels = np.stack([volume, volume // 2], axis=-1)
    two = elastic_deform_3d(channels, rng=9)
    np.testing.assert_allclose(two[..., 0], a, atol=1)


def test_bad_volumes_are_refused():
    with pytest.raises(ValueError, match="ZYX or ZYXC"):
        elastic_deform_3d(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="label-like array 0"):
        elastic_deform_3d(np.zeros((4, 8, 8)), np.zeros((4, 8, 9)))
