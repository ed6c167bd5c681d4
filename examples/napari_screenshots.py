"""Take the README's napari screenshots from a real run of the plugin.

1. ``napari_segment.png``: the bundled sample after Segment with the demo model (trained on first
   use, ~80 s, then cached).
2. ``napari_retrain.png``: after one correct-and-retrain round: the left half of the demo
   model's labels replaced by the reference labels (what a person's corrections would give),
   "Retrain on my corrections" within ``--budget``, then Segment again with the new round.
3. ``napari_volume.png``: the bundled confocal volume in napari's 3-D view after Segment with a
   3-D net that the Train widget trained ("volumes" on, ``--volume-budget``) on its left half
   (cached beside the demo model as ``volume-model``).

Needs the napari extra and a display; on a machine without one, run it under Xvfb::

    pip install -e ".[cpu,napari]"
    xvfb-run -a -s "-screen 0 1400x900x24" python examples/napari_screenshots.py

The demo model's cache (``UNET_TF_CACHE``, default ~/.cache/unet-tf) and the retrain round's
folder (next to it, ``demo-model-round1``, ...) are reused or written as in a user's session.
``--parts 3d`` takes the volume's screenshot only.
"""

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from unet_tf.metrics import evaluate
from unet_tf.napari_plugin.widgets import (SegmentWidget, TrainWidget, demo_model_folder,
                                           nuclei_sample, nuclei_volume_sample)

WAIT = 1800   # s: the demo model's first training and a retrain round on a slow laptop


def wait_until(condition, what):
    """Let Qt run (the widgets' workers report through its event loop) until ``condition``."""
    app, start = QApplication.instance(), time.monotonic()
    while not condition():
        app.processEvents()
        time.sleep(0.05)
        if time.monotonic() - start > WAIT:
            raise TimeoutError(f"{what} did not finish within {WAIT} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/screenshots", help="folder for the PNGs")
    parser.add_argument("--budget", default="1m", help="the retrain round's time budget")
    parser.add_argument("--volume-budget", default="5m", help="the 3-D net's training budget")
    parser.add_argument("--parts", default="2d,3d", help="which screenshots: 2d, 3d or both")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "2d" in args.parts:
        segment_and_retrain(out, args.budget)
    if "3d" in args.parts:
        segment_a_volume(out, args.volume_budget)


def segment_and_retrain(out, budget):
    viewer = napari.Viewer(show=False)
    viewer.window._qt_window.resize(1400, 900)   # the window Xvfb's screen holds
    for data, meta, kind in nuclei_sample():
        getattr(viewer, f"add_{kind}")(data, **meta)
    truth = viewer.layers["nuclei labels"].data
    viewer.layers["nuclei labels"].visible = False
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="unet-tf: Segment")
    segment.reset_choices()
    segment.image.value = viewer.layers["nuclei"]

    segment.segment()
    wait_until(lambda: segment.segmented is not None and not segment.job.running, "Segment")
    labels = viewer.layers["nuclei [unet-tf]"]
    right = truth.shape[1] // 2
    before = evaluate(truth[:, right:], labels.data[:, right:])["f1"]
    viewer.screenshot(str(out / "napari_segment.png"), canvas_only=False)

    corrected = labels.data.copy()
    # the corrections of the left half: the true nuclei painted as new labels (ids after the
    # segmentation's, or a true and a predicted nucleus sharing an id would be one object)
    corrected[:, :right] = np.where(truth[:, :right] > 0, truth[:, :right] + corrected.max(), 0)
    labels.data = corrected
    segment.retrain_budget.value = budget
    segment.retrain()
    wait_until(lambda: not segment.retrain_job.running, "Retrain")
    if len(segment.round_folders) < 2:
        raise SystemExit(f"the retrain round did not finish: {segment.info.value}")
    segment.segment()
    wait_until(lambda: not segment.job.running
               and segment.segmented["folder"] == segment.round_folders[-1], "Segment")
    after = evaluate(truth[:, right:],
                     viewer.layers["nuclei [unet-tf]"].data[:, right:])["f1"]
    viewer.screenshot(str(out / "napari_retrain.png"), canvas_only=False)
    print(f"F1@0.5 on the right half (not corrected): {before:.3f} before the round, "
          f"{after:.3f} after; screenshots in {out}/")
    viewer.close()


def segment_a_volume(out, budget):
    viewer = napari.Viewer(show=False)
    viewer.window._qt_window.resize(1400, 900)
    for data, meta, kind in nuclei_volume_sample():
        getattr(viewer, f"add_{kind}")(data, **meta)
    volume, truth = viewer.layers["nuclei 3-D"], viewer.layers["nuclei 3-D labels"]
    folder = demo_model_folder().parent / "volume-model"
    if not (folder / "model.keras").is_file():   # train on the left half, as a user would
        half = volume.data.shape[2] // 2
        viewer.add_image(volume.data[:, :, :half], name="left half", scale=volume.scale)
        viewer.add_labels(truth.data[:, :, :half], name="left half labels", scale=volume.scale)
        train = TrainWidget(viewer)
        dock = viewer.window.add_dock_widget(train, name="unet-tf: Train")
        train.reset_choices()
        train.image.value, train.labels.value = (viewer.layers["left half"],
                                                 viewer.layers["left half labels"])
        train.volumes.value, train.budget.value, train.out.value = True, budget, str(folder)
        train.train()
        wait_until(lambda: not train.job.running, "Train (3-D)")
        if train.trained is None:
            raise SystemExit(f"the 3-D training did not finish: {train.loss.value}")
        for name in ("left half", "left half labels"):
            viewer.layers.remove(name)
        viewer.window.remove_dock_widget(dock)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="unet-tf: Segment")
    segment.reset_choices()
    segment.image.value, segment.model.value = volume, str(folder)
    segment.segment()
    wait_until(lambda: segment.segmented is not None and not segment.job.running, "Segment")
    labels = viewer.layers["nuclei 3-D [unet-tf]"]
    half = truth.data.shape[2] // 2
    f1 = evaluate(truth.data[:, :, half:], labels.data[:, :, half:])["f1"]
    truth.visible = False
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.camera.angles = (-20, 30, 80)   # tilted, so the stack's depth shows
    viewer.screenshot(str(out / "napari_volume.png"), canvas_only=False)
    print(f"3-D: {int(labels.data.max())} objects; F1@0.5 (3-D objects) on the right half, "
          f"which the net never saw: {f1:.3f}; screenshot in {out}/")
    viewer.close()


if __name__ == "__main__":
    main()
