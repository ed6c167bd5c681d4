"""The README's napari screenshots, taken from a real run on a real viewer.

    xvfb-run -a -s "-screen 0 1400x900x24" python examples/napari_screenshot.py [--out docs]

Needs the ``[napari]`` extra (PyQt6) and, without a display, Xvfb (see the README's "In
napari"). On the bundled sample it trains a weak model (a few dozen steps on the left half),
segments the whole image with the Segment widget (``napari-segment.png``), gives the true
labels of the left half as the correction, runs one Retrain round and segments again
(``napari-retrain.png``). Prints F1@0.5 on the right half, which no model trained on, before
and after.
"""

import argparse
import time
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory

import napari

from unet_tf import UNet
from unet_tf.config import TrainConfig
from unet_tf.metrics import evaluate
from unet_tf.napari_plugin.widgets import SegmentWidget, nuclei_sample


def wait_until(condition, timeout=600):
    """Run Qt's event loop (the widgets' worker threads report through it) until done."""
    app, start = napari.qt.get_qapp(), time.time()
    while not condition():
        if time.time() - start > timeout:
            raise TimeoutError("the widget did not finish in time")
        app.processEvents()
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs", help="folder for the PNG files")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=False)
    (image, image_meta, _), (truth, _, _) = nuclei_sample()
    viewer.add_image(image, **image_meta)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="unet-tf: Segment", area="right")
    with TemporaryDirectory() as tmp:
        weak = Path(tmp) / "weak"
        with warnings.catch_warnings():   # a short run: "finds almost none of the objects"
            warnings.simplefilter("ignore", UserWarning)
            UNet.train(TrainConfig(out=str(weak), tile_size=188, depth=4, filters=8,
                                   dropout=0.0, epochs=1, steps_per_epoch=40, batch_size=2,
                                   optimizer="adam", learning_rate=1e-3, class_weights=None,
                                   val_split=0.0),
                       [image[:, :256]], [truth[:, :256]], verbose=0)
        widget.reset_choices()
        widget.image.value = viewer.layers["nuclei"]
        widget.model.value = str(weak)
        widget.segment()
        wait_until(lambda: widget.segmented is not None and widget.run.enabled)
        layer = viewer.layers["nuclei [unet-tf]"]
        before = evaluate(truth[:, 272:], layer.data[:, 272:])["f1"]
        viewer.screenshot(str(out / "napari-segment.png"), canvas_only=False)
        corrected = layer.data.copy()
        corrected[:, :256] = truth[:, :256]          # the correction: the left half made right
        layer.data = corrected
        widget.retrain_budget.value = "30s"
        widget.retrain()
        wait_until(lambda: len(widget.round_folders) == 2 and widget.retrain_button.enabled)
        widget.segment()
        wait_until(lambda: widget.segmented["folder"] != weak and widget.run.enabled)
        after = evaluate(truth[:, 272:], viewer.layers["nuclei [unet-tf]"].data[:, 272:])["f1"]
        viewer.screenshot(str(out / "napari-retrain.png"), canvas_only=False)
    print(f"F1@0.5 on the right half (never trained on): {before:.3f} after Segment, "
          f"{after:.3f} after one Retrain round; screenshots in {out}/")
    viewer.close()


if __name__ == "__main__":
    main()
