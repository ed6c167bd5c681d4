"""Your own Keras ``fit``: the unet-tf dataset and loss, with your own callbacks and schedule.

    python examples/custom_fit.py
"""

import keras

import unet_tf

image, instances = unet_tf.samples.load_sample()
train_data = unet_tf.make_dataset([image[:, :384]], [instances[:, :384]], tile_size=188, depth=4,
                                  batch_size=4, seed=0)
val_data = unet_tf.make_dataset([image[:, 384:]], [instances[:, 384:]], tile_size=188, depth=4,
                                batch_size=4, validation=True)

model = unet_tf.build_unet(depth=4, filters=16, dropout=0.0)
schedule = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=200)
model.compile(keras.optimizers.Adam(schedule), unet_tf.weighted_pixel_loss(),
              metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
model.fit(train_data, steps_per_epoch=40, epochs=5, validation_data=val_data, shuffle=False,
          callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=3,
                                                   restore_best_weights=True)])
model.save("custom_fit.keras")
