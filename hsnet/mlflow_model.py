"""The model-from-code file MLflow stores with every registered HSNet (no pickled objects)."""

import mlflow

from hsnet.pyfunc import HSNetModel

mlflow.models.set_model(HSNetModel())
