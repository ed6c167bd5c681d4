import numpy as np

from unet_tf import weighted_pixel_loss


def numpy_energy(logits, labels, weights):
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_softmax, labels[..., None], -1)[..., 0]
    return -(weights * picked).sum() / labels.size


def test_weighted_loss_equals_numpy_reference():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 7, 3)).astype("float32") * 3
    labels = rng.integers(0, 3, size=(2, 5, 7)).astype("int32")
    weights = rng.uniform(0.1, 12, size=(2, 5, 7)).astype("float32")
    loss = weighted_pixel_loss()
    value = float(loss(labels, logits, sample_weight=weights))
    np.testing.assert_allclose(value, numpy_energy(logits, labels, weights), rtol=1e-5)
    # Weights really act per pixel: zero weight on a pixel removes exactly its term.
    weights[0, 0, 0] = 0
    np.testing.assert_allclose(float(loss(labels, logits, sample_weight=weights)),
                               numpy_energy(logits, labels, weights), rtol=1e-5)
