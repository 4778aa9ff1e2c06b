"""The file MLflow runs to rebuild the served model (models-from-code): the registered model stores this
code and the export's files, never a pickled object of ours."""

import mlflow

from imgcls.serving.model import ImageClassifier

mlflow.models.set_model(ImageClassifier())
