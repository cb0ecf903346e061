"""hsnet: HSNet facial expression recognition, from raw datasets to a registered model."""

__version__ = "0.1.0"
