"""The exported model as an MLflow pyfunc: encoded image bytes in, class names and probabilities out.

Whatever reaches a served model is untrusted. Only bytes are images (JSON carries them as base64); a string is
never opened as a path; each image and each request is bounded, in bytes and in decoded pixels (read from the
headers before anything is decoded), and images are decoded one at a time straight down to about twice the
model's input size and run through the model 32 at a time; a bad request is refused in one line without a
stack trace or anything of the request; and the model files are checked against the model card's SHA-256
before they are loaded. Inference runs on ONNX Runtime, so no pickle is ever loaded to serve."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from imgcls.data.images import BadImage, decode_image, open_image
from imgcls.data.transforms import eval_transform
from imgcls.export.formats import class_probabilities, load_runtime, read_temperature, verify_export

MAX_IMAGES = 256  # rows per request
MAX_IMAGE_BYTES = 10 * 2**20  # encoded size of one image
MAX_PIXELS = 40_000_000  # decoded size of one image, read from its header before decoding
MAX_REQUEST_PIXELS = (
    200_000_000  # all of a request's images together, from their headers, before decoding any
)
CHUNK = 32  # images decoded and run through the model at a time: bounds the activations
REFUSED = "request refused: "  # starts every message of ours; the server passes on only these


class BadRequest(MlflowException):
    """A request the model refuses: one line, no stack trace, nothing of the request quoted (MLflow answers
    400)."""

    def __init__(self, message: str):
        super().__init__(REFUSED + message, error_code=INVALID_PARAMETER_VALUE)


def image_bytes(value, row: int) -> bytes:
    """One `image` cell -> its encoded bytes, bounded; anything but bytes is refused (a string is never a
    path).
    """
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise BadRequest(
            f"row {row}: `image` must be encoded image bytes (base64 in JSON), got "
            f"{type(value).__name__}; file paths are not accepted"
        )
    if len(value) > MAX_IMAGE_BYTES:
        raise BadRequest(f"row {row}: image is {len(value):,} bytes, over the {MAX_IMAGE_BYTES:,}-byte limit")
    return value


def check_pixel_budget(images: list[bytes]) -> None:
    """Every image's size from its header, summed, against the request's budget: refused before decoding."""
    total = 0
    for row, data in enumerate(images):
        try:
            with open_image(data, MAX_PIXELS) as image:
                total += image.size[0] * image.size[1]
        except BadImage as error:
            raise BadRequest(f"row {row}: {error}") from None
    if total > MAX_REQUEST_PIXELS:
        raise BadRequest(
            f"the images hold {total:,} pixels together, over the {MAX_REQUEST_PIXELS:,} a request may "
            "hold; send them in smaller requests"
        )


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Wraps models/export/ (model.onnx, labels.json, preprocessing.json and calibration.json, checked against
    model_card.json). Probabilities are temperature-scaled: softmax(logits / T)."""

    def load_context(self, context) -> None:
        self.load(Path(context.artifacts["export_dir"]))

    def load(self, folder: Path) -> None:
        verify_export(folder)
        self.folder = folder
        self.logits = load_runtime(folder, "onnx")
        self.labels = json.loads((folder / "labels.json").read_text())
        self.temperature = read_temperature(folder)
        spec = json.loads((folder / "preprocessing.json").read_text())
        self.transform, self.input_size = eval_transform(spec), int(spec["resize_short_side"])

    def model_input(self, data: bytes, row: int) -> torch.Tensor:
        """One image decoded straight down to about twice the model's input size, then transformed: the full
        picture is never held in several copies, and only one image is decoded at a time."""
        try:
            image = decode_image(data, max_pixels=MAX_PIXELS, shrink_to=self.input_size)
        except BadImage as error:
            raise BadRequest(f"row {row}: {error}") from None
        return self.transform(image)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """`image` column of encoded image bytes -> label, probability and one column per class."""
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            raise BadRequest("send a table with one column `image` of encoded image bytes (base64 in JSON)")
        if len(model_input) > MAX_IMAGES:
            raise BadRequest(f"{len(model_input)} images in one request; send at most {MAX_IMAGES}")
        images = [image_bytes(value, row) for row, value in enumerate(model_input["image"])]
        if not images:
            raise BadRequest("no images in the request")
        check_pixel_budget(images)
        logits = []
        for start in range(
            0, len(images), CHUNK
        ):  # a whole request at once: 256 x 224 px is GBs of activations
            batch = torch.stack(
                [self.model_input(data, row) for row, data in enumerate(images[start : start + CHUNK], start)]
            )
            logits.append(self.logits(batch.numpy()))
        probabilities = class_probabilities(np.concatenate(logits), self.temperature)
        best = probabilities.argmax(1)
        frame = pd.DataFrame(probabilities.numpy(), columns=self.labels)
        frame.insert(0, "probability", probabilities.max(1).values.numpy())
        frame.insert(0, "label", [self.labels[i] for i in best.tolist()])
        return frame
