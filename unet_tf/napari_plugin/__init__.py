"""unet-tf in napari: the Segment, Train and Evaluate widgets and the nuclei sample
(:mod:`unet_tf.napari_plugin.widgets`), declared in ``napari.yaml`` (npe2)."""
