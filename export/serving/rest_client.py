#!/usr/bin/env python3
"""Segment images of any size with a unet-tf model behind TF Serving's REST API.

Needs only numpy (+ tifffile/opencv to read and write images); no TensorFlow on the client::

    python export/serving/rest_client.py http://localhost:8501 my-model/config.json \\
        cells.tif --out predictions

The image is cut into overlap tiles on the client, exactly like ``unet-tf predict`` (geometry and
normalisation from the model folder's ``config.json``), and the tiles are posted in batches to
``/v1/models/NAME[/versions/N]:predict`` as ``{"signature_name": "serving_default",
"instances": [tile, ...]}``; each prediction comes back as ``{"probabilities": ..., "labels": ...}``.
"""

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from overlap_tile import as_yxc_with, predict_image  # noqa: E402
from edge_predict import labels_from, read_image, write_labels  # noqa: E402

PROG = "rest_client"


def tile_metadata(config):
    """What overlap-tile needs, from a model folder's ``config.json``."""
    a = config["architecture"]
    return {"tile_size": config["tile_size"], "output_size": config["output_size"],
            "pooling_period": 2 ** (a["depth"] - 1), "channels": a["channels"],
            "num_classes": a["num_classes"], "normalization": config["normalization"],
            "postprocessing": config.get("postprocessing")}


def predict_url(server, model="unet", version=None):
    """TF Serving's REST predict endpoint."""
    versioned = f"/versions/{version}" if version is not None else ""
    return f"{server.rstrip('/')}/v1/models/{model}{versioned}:predict"


def build_request(tiles, signature="serving_default"):
    """The JSON body for a batch of normalised float32 tiles ``(B, T, T, C)`` (row format)."""
    return {"signature_name": signature, "instances": np.asarray(tiles, np.float32).tolist()}


def post(url, body, timeout=300):
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        raise RuntimeError(f"{url} answered {err.code}: {detail}") from None


class ServingModel:
    """Tiles -> class probabilities via a TF Serving REST endpoint."""

    def __init__(self, url, config, batch_size=4, timeout=300):
        self.url, self.batch_size, self.timeout = url, batch_size, timeout
        self.meta = tile_metadata(config)

    def predict_tiles(self, tiles):
        answer = post(self.url, build_request(tiles), self.timeout)
        if "predictions" not in answer:
            raise RuntimeError(f"{self.url}: no 'predictions' in the answer: {str(answer)[:300]}")
        return np.array([p["probabilities"] for p in answer["predictions"]], np.float32)

    def predict(self, image):
        """Class probabilities ``(H, W, K)`` for a whole ``YX``/``YXC`` image."""
        meta = self.meta
        image = as_yxc_with(image, meta["channels"])
        return predict_image(image, self.predict_tiles, meta["tile_size"], meta["output_size"],
                             meta["pooling_period"], meta["normalization"], self.batch_size)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("server", help="TF Serving REST address, e.g. http://localhost:8501")
    parser.add_argument("config", help="the model folder's config.json")
    parser.add_argument("inputs", nargs="+", help="image files")
    parser.add_argument("--out", required=True, help="folder for label masks")
    parser.add_argument("--model", default="unet", help="served model name (unet)")
    parser.add_argument("--version", type=int, help="model version (default: the latest)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per request (4)")
    args = parser.parse_args(argv)
    try:
        config = json.loads(Path(args.config).read_text())
        model = ServingModel(predict_url(args.server, args.model, args.version), config,
                             args.batch_size)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for source in map(Path, args.inputs):
            probabilities = model.predict(read_image(source))
            target = out / f"{source.stem}{'.tif' if source.suffix.lower() in ('.tif', '.tiff') else '.png'}"
            write_labels(target, labels_from(probabilities, model.meta))
            print(f"{source} -> {target}")
    except (ValueError, FileNotFoundError, KeyError, json.JSONDecodeError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, urllib.error.URLError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
