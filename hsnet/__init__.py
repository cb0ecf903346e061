"""hsnet: HSNet facial expression recognition, from raw datasets to a registered model."""

import os

__version__ = "0.1.0"

# MLflow (3.2 and later) sends usage data by default; hsnet's steps, server and the models it logs
# send none unless the user sets MLFLOW_DISABLE_TELEMETRY=false (DVC's and Great Expectations' are
# off where hsnet runs them: hsnet.data.fetch, hsnet.data.validate). MLflow starts its client when
# it is imported: where it came first (mlflow.pyfunc.load_model of an hsnet model) the client is
# stopped here, but what it recorded before (that load) is MLflow's: set the variable there too
# (the images do).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _stop_mlflow_telemetry() -> None:
    import sys

    telemetry = sys.modules.get("mlflow.telemetry")
    if telemetry is None or os.environ["MLFLOW_DISABLE_TELEMETRY"].lower() not in ("true", "1"):
        return
    try:
        client = telemetry.get_telemetry_client()
        telemetry.set_telemetry_client()  # reads the variable again: no client
        if client is not None:
            client._clean_up()  # its threads; records not sent yet are dropped with it
    except Exception:  # noqa: BLE001 - MLflow's private workings may change; telemetry is not ours to fail on
        pass


_stop_mlflow_telemetry()
