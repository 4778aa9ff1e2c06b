"""The exported model as an MLflow pyfunc: image bytes or paths in, class names and probabilities out."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import torch

from stages.data import eval_transform
from stages.imagefolder import decode_image
from stages.runtimes import load_runtime


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Wraps models/export/ (model.pt2 + labels.json + preprocessing.json) with its preprocessing."""

    def load_context(self, context) -> None:
        self.load(Path(context.artifacts["export_dir"]))

    def load(self, folder: Path) -> None:
        self.folder = folder
        self.logits = load_runtime(folder, "torch")
        self.labels = json.loads((folder / "labels.json").read_text())
        self.transform = eval_transform(json.loads((folder / "preprocessing.json").read_text()))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """`image` column of encoded bytes or file paths -> label, probability and one column per class."""
        images = [decode_image(v if isinstance(v, bytes) else Path(v).read_bytes()) for v in model_input["image"]]
        batch = torch.stack([self.transform(image) for image in images])
        probabilities = torch.softmax(torch.from_numpy(self.logits(batch.numpy())), dim=1)
        best = probabilities.argmax(1)
        frame = pd.DataFrame(probabilities.numpy(), columns=self.labels)
        frame.insert(0, "probability", probabilities.max(1).values.numpy())
        frame.insert(0, "label", [self.labels[i] for i in best.tolist()])
        return frame
