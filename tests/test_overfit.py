from unet_tf.backend import keras   # TensorFlow as unet_tf loads it
from unet_tf import build_unet, normalize, output_size, weighted_pixel_loss


def test_tiny_unet_overfits_one_real_image(sample):
    image, instances = sample
    tile, depth = 156, 3
    out = output_size(tile, depth)
    margin = (tile - out) // 2
    x = normalize(image)[100:100 + tile, 200:200 + tile][None, ..., None]
    y = (instances[100 + margin:100 + margin + out, 200 + margin:200 + margin + out] > 0)
    y = y[None].astype("int32")
    model = build_unet((None, None, 1), depth=depth, filters=8, dropout=0.0)
    model.compile(keras.optimizers.Adam(1e-3), weighted_pixel_loss())
    history = model.fit(x, y, epochs=150, batch_size=1, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    accuracy = (model.predict(x, verbose=0).argmax(-1) == y).mean()
    assert accuracy > 0.9
