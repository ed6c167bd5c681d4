import numpy as np
import pytest

from unet_tf.augment import Augmentation, elastic_deform, flip_rotate, vary_intensity


@pytest.fixture
def pair(sample):
    image, instances = sample
    return image[:200, :180], instances[:200, :180]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int32])
def test_elastic_keeps_label_values_and_dtype(pair, dtype):
    image, labels = pair
    image = image.astype(dtype)
    out, out_labels = elastic_deform(image, labels, rng=1)
    assert out.dtype == image.dtype and out.shape == image.shape
    assert out_labels.dtype == labels.dtype and out_labels.shape == labels.shape
    assert set(np.unique(out_labels)) <= set(np.unique(labels))


def test_elastic_with_channel_axis_and_many_channels(pair):
    image, labels = pair
    for channels in (1, 3, 6):
        stack = np.repeat(image[..., None], channels, axis=-1)
        out = elastic_deform(stack, rng=2)
        assert out.shape == stack.shape
        for c in range(1, channels):    # every channel moved by the same field
            np.testing.assert_array_equal(out[..., c], out[..., 0])


def test_elastic_identity_for_zero_sigma(pair):
    image, labels = pair
    out, out_labels = elastic_deform(image.astype(np.float32), labels, sigma=0.0, rng=0)
    np.testing.assert_array_equal(out, image.astype(np.float32))
    np.testing.assert_array_equal(out_labels, labels)


def test_elastic_is_reproducible_and_moves_pixels(pair):
    image, labels = pair
    a = elastic_deform(image, labels, rng=5)
    b = elastic_deform(image, labels, rng=np.random.default_rng(5))
    c = elastic_deform(image, labels, rng=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert (a[1] != labels).mean() > 0.02
    assert (a[1] != c[1]).mean() > 0.02


def test_elastic_moves_image_and_labels_together(pair):
    image, labels = pair
    out, out_labels = elastic_deform(image.astype(np.float32), labels, rng=3)
    # Nuclei are bright: after the shared warp they still are, where the warped labels say.
    assert out[out_labels > 0].mean() > 2 * out[out_labels == 0].mean()


def test_elastic_rejects_mismatched_labels(pair):
    image, labels = pair
    with pytest.raises(ValueError, match="expected the image's YX shape"):
        elastic_deform(image, labels[:10])


def test_flip_rotate_is_a_shared_dihedral_transform():
    a = np.arange(12).reshape(3, 4)
    seen = set()
    for seed in range(40):
        x, y = flip_rotate([a, a * 10], np.random.default_rng(seed))
        np.testing.assert_array_equal(y, x * 10)
        seen.add(x.tobytes() + bytes(x.shape))
    assert len(seen) == 8


def test_intensity_variation_changes_values_not_shape():
    image = np.zeros((40, 40, 1), np.float32)
    image[5:15, 5:15] = image[25:35, 20:30] = 1.0     # objects: blur keeps them, unlike pixel noise
    for seed in range(20):
        out = vary_intensity(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.float32
        assert not np.allclose(out, image)
        assert np.corrcoef(out.ravel(), image.ravel())[0, 1] > 0.5   # the picture survives
    off = dict(brightness=0, contrast=0, gamma=0, field=0, blur=0, noise=0)
    np.testing.assert_array_equal(vary_intensity(image, np.random.default_rng(0), **off), image)


def test_the_gain_field_dims_some_objects_and_brightens_others():
    """Objects of equal brightness come out unequal, the background stays put: the variation
    that per-image normalisation cannot undo."""
    image = np.zeros((96, 96, 1), np.float32)
    centres = [(y, x) for y in (16, 48, 80) for x in (16, 48, 80)]
    for y, x in centres:
        image[y - 4:y + 4, x - 4:x + 4] = 1.0
    only_field = dict(brightness=0, contrast=0, gamma=0, blur=0, noise=0, field=0.4)
    spreads = []
    for seed in range(10):
        out = vary_intensity(image, np.random.default_rng(seed), **only_field)
        np.testing.assert_array_equal(out[image == 0], 0)
        levels = [out[y, x, 0] for y, x in centres]
        spreads.append(max(levels) / min(levels))
    assert np.median(spreads) > 1.5


def test_augmentation_switches(pair):
    image, labels = pair
    x = image[:64, :64, None].astype(np.float32)
    y, w = labels[:64, :64], np.ones((64, 64), np.float32)
    off = Augmentation(elastic=False, flip_rotate=False, intensity=False)
    out = off.apply(x, y, w, np.random.default_rng(0))
    np.testing.assert_array_equal(out[0], x)
    np.testing.assert_array_equal(out[1], y)
    assert off.margin() == 0 and Augmentation().margin() == 30


def test_elastic_labels_beyond_uint16(pair):
    image, labels = pair
    big = labels.astype(np.int64) * 100_000
    out, warped, small = elastic_deform(image, big, labels, rng=9)
    assert warped.dtype == np.int64
    np.testing.assert_array_equal(warped, small.astype(np.int64) * 100_000)
