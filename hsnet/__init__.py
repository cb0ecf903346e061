"""hsnet: HSNet facial expression recognition, from raw datasets to a registered model."""

import os

__version__ = "0.1.0"

# MLflow (3.2 and later) sends usage data by default; hsnet's steps, server and the models it logs
# send none unless the user sets MLFLOW_DISABLE_TELEMETRY=false (DVC's and Great Expectations' are
# off where hsnet runs them: hsnet.data.fetch, hsnet.data.validate)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
