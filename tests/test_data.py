import numpy as np
import pytest

from unet_tf.backend import keras, tf   # TensorFlow as unet_tf loads it
from unet_tf import build_unet, output_size, weighted_pixel_loss
from unet_tf.data import validation_windows, make_dataset


@pytest.mark.parametrize("tile", [188, 572])
def test_element_shapes_and_dtypes(sample, tile):
    image, instances = sample
    ds = make_dataset([image], [instances], tile_size=tile, batch_size=2, seed=0)
    x, y, w = next(iter(ds))
    out = output_size(tile)
    assert x.shape == (2, tile, tile, 1) and x.dtype == tf.float32
    assert y.shape == (2, out, out) and y.dtype == tf.int32
    assert w.shape == (2, out, out) and w.dtype == tf.float32
    assert set(np.unique(y.numpy())) <= {0, 1}
    assert float(tf.reduce_max(w)) > 2.0        # border term present
    assert ds.element_spec[0].shape == (2, tile, tile, 1)


def test_labels_are_the_centre_of_the_input_tile(sample):
    image, instances = sample
    ds = make_dataset([image], [instances], tile_size=188, depth=3, augment=False,
                      weight_map=False, seed=4)
    x, y, w = (t.numpy()[0] for t in next(iter(ds)))
    out = output_size(188, 3)
    margin = (188 - out) // 2
    # Find the tile in the mirror-padded normalised image; the labels are under its centre.
    from unet_tf import normalize
    padded = np.pad(normalize(image), margin, mode="reflect")
    hits = [(r, c) for r in range(512 - out + 1) for c in range(512 - out + 1)
            if padded[r, c] == x[0, 0, 0] and np.array_equal(padded[r:r + 188, c:c + 188], x[..., 0])]
    assert len(hits) == 1
    r, c = hits[0]
    np.testing.assert_array_equal(y, instances[r:r + out, c:c + out] > 0)
    assert np.all(w == 1)


def test_seed_makes_the_stream_reproducible(sample):
    image, instances = sample
    take = lambda seed: [t.numpy() for t in next(iter(make_dataset(
        [image], [instances], tile_size=188, seed=seed)))]
    a, b, c = take(7), take(7), take(8)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(a[0], c[0])


def test_small_images_are_mirrored_and_unscored_outside(sample):
    image, instances = sample
    small_image, small_mask = image[:40, :50], instances[:40, :50]
    ds = make_dataset([small_image, image], [small_mask, instances], tile_size=188, depth=4,
                      shuffle=False, augment=False, repeat=False, seed=0)
    x, y, w = (t.numpy()[0] for t in next(iter(ds)))
    out = output_size(188, 4)
    assert out > 50
    assert (w > 0).sum() == 40 * 50          # exactly the real pixels are scored
    assert np.isfinite(x).all()


def test_validation_tiles_cover_every_image_pixel(sample):
    image, instances = sample
    out = output_size(252)
    tiles = validation_windows((512, 300), out)
    covered = np.zeros((512, 300), bool)
    for top, left in tiles:
        covered[top:top + out, left:left + out] = True
    assert covered.all()
    ds = make_dataset([image, image[:300, :200]], [instances, instances[:300, :200]],
                      tile_size=252, batch_size=3, validation=True)
    n = sum(int(x.shape[0]) for x, _, _ in ds)
    assert n == len(validation_windows((512, 512), out)) + len(validation_windows((300, 200), out))


def test_model_learns_from_the_dataset(sample):
    image, instances = sample
    ds = make_dataset([image], [instances], tile_size=124, depth=3, batch_size=4, seed=0)
    model = build_unet(depth=3, filters=8, dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-3), weighted_pixel_loss())
    losses = model.fit(ds, steps_per_epoch=10, epochs=3, verbose=0, shuffle=False).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses


def test_mismatched_inputs_are_rejected(sample):
    image, instances = sample
    with pytest.raises(ValueError, match="expected the shape of image 0"):
        make_dataset([image], [instances[:10]], tile_size=188)
    with pytest.raises(ValueError, match="got 2 images but 1 masks"):
        make_dataset([image, image], [instances], tile_size=188)
    with pytest.raises(ValueError, match="input 190 is not valid"):
        make_dataset([image], [instances], tile_size=190)
    with pytest.raises(ValueError, match="class ids 0..2"):
        make_dataset([image], [instances], tile_size=188, num_classes=3)
