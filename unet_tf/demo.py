"""``unet-tf demo``: the whole workflow on the bundled nuclei image, in a few minutes on a CPU.

The left three quarters of the 512x512 DSB2018 image train a small U-Net (weight maps, elastic
deformation); the right quarter, never seen in training, is predicted with overlap-tile and
scored. Everything is written as ordinary files, so the CLI commands printed at the end rerun
each step on them.
"""

import json
import time
from pathlib import Path


# The planner chooses everything, as for a user's data, within a budget that keeps the demo at
# about a minute and a half on 2 fast CPU cores; a slower machine gets the planner's minimum
# (250 steps) instead. One image only, so no validation split: the held-out quarter is the test.
DEMO_BUDGET = "80s"
TRAIN_COLUMNS = 384


def run_demo(out="unet-tf-demo", time_budget=DEMO_BUDGET, overwrite=False, quiet=False):
    """Plan, train, predict and evaluate on the bundled sample; returns the held-out metrics."""
    # imported here, so `unet-tf --help` (which reads DEMO_BUDGET) loads none of it
    from .io import write_atomically, write_image
    from .metrics import evaluate
    from .planner import configure_run, format_duration
    from .postprocess import overlay
    from .samples import load_sample
    from .unet import UNet
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty (use --overwrite to replace the demo there)")
    start = time.perf_counter()
    image, instances = load_sample()
    data = out / "data"
    for split, columns in (("train", slice(0, TRAIN_COLUMNS)), ("test", slice(TRAIN_COLUMNS, None))):
        write_image(data / split / "images" / "nuclei.tif", image[:, columns], overwrite=True)
        write_image(data / split / "masks" / "nuclei.tif", instances[:, columns], overwrite=True)

    train_image, train_mask = image[:, :TRAIN_COLUMNS], instances[:, :TRAIN_COLUMNS]
    config, plan = configure_run([train_image], [train_mask], time_budget=time_budget,
                                 at_least_minimum=True,
                                 fixed=dict(out=str(out / "model"),
                                            images=str(data / "train" / "images"),
                                            masks=str(data / "train" / "masks")))
    print(f"the plan for {image.shape[0]}x{TRAIN_COLUMNS} pixels of the sample on this machine:")
    print(plan.table())
    print(f"training (~{format_duration(plan.estimated_seconds)}) ...", flush=True)
    unet = UNet.train(config, [train_image], [train_mask], overwrite=True,
                      verbose=0 if quiet else 2, plan=plan)
    trained = time.perf_counter()

    test_image, test_mask = image[:, TRAIN_COLUMNS:], instances[:, TRAIN_COLUMNS:]
    predicted = unet.segment(test_image)
    predictions = out / "predictions"
    write_image(predictions / "nuclei.tif", predicted, overwrite=True)
    write_image(predictions / "nuclei_overlay.png", overlay(test_image, predicted), overwrite=True)
    write_image(predictions / "nuclei_truth_overlay.png", overlay(test_image, test_mask),
                overwrite=True)
    metrics = evaluate(test_mask, predicted)
    write_atomically(out / "metrics.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
    done = time.perf_counter()

    print(f"\nheld-out quarter ({test_image.shape[0]}x{test_image.shape[1]} pixels, "
          f"{metrics['true']} nuclei, never seen in training):")
    print(f"  foreground IoU   {metrics['foreground_iou']:.3f}")
    print(f"  pixel error      {metrics['pixel_error']:.3f}")
    print(f"  Rand error       {metrics['rand_error']:.3f}")
    print(f"  nuclei F1 @0.5   {metrics['f1']:.3f}   ({metrics['predicted']} found, "
          f"{metrics['merged']} merged, {metrics['split']} split)")
    print(f"\ntime: training {trained - start:.0f} s, prediction and scoring {done - trained:.0f} s")
    print(f"written to {out}/:")
    print("  data/            the train/test split as image + mask folders")
    print("  model/           model folder (model.keras, config.json, history.csv, logs/)")
    print("  predictions/     nuclei.tif (labels), nuclei_overlay.png (look at it), truth overlay")
    print("  metrics.json")
    print(f"next: unet-tf predict {out}/model {data}/test/images --out {out}/again --overwrite")
    print(f"      unet-tf evaluate {out}/model --images {data}/test/images --masks {data}/test/masks")
    print(f"      tensorboard --logdir {out}/model/logs")
    return metrics
