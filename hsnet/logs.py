"""Logging as every hsnet entry point has it (the CLI, the Kubeflow components)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("great_expectations", "botocore", "urllib3", "matplotlib", "PIL")  # their INFO lines drown hsnet's


def setup(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
