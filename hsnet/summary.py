"""What a pipeline run left, per dataset: ``python -m hsnet.summary runs`` (the end of ``make pipeline``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarize(runs: str | Path = "runs") -> str:
    """The lines ``make pipeline`` ends with: per dataset of dvc.yaml's ``runs/DATASET/`` its test
    figures, its plots and what its register stage did (``registered.json``), with the next step."""
    from . import tracking
    from .evaluate import COMPARISON, CONFUSION, METRICS_FILE
    from .registry import CANDIDATE, PREVIOUS, PRODUCTION, RECORD, held
    from .train import CURVES

    runs = Path(runs)
    lines = []
    for eval_dir in sorted(runs.glob("*/eval")):
        dataset = eval_dir.parent.name
        metrics_path = eval_dir / METRICS_FILE
        if not metrics_path.is_file():
            continue
        m = json.loads(metrics_path.read_text(encoding="utf-8"))
        lines.append(f"{dataset}: test accuracy {m['accuracy']:.2%}, mean accuracy {m['mean_accuracy']:.2%} "
                     f"({m['images']} test images)" + ("; each scored with its mirror image averaged in "
                                                       "(evaluate.tta_hflip): not the served model's figures"
                                                       if m.get("tta_hflip") else ""))
        lines.append(f"  confusion matrix: {eval_dir / CONFUSION}; curves: "
                     f"{eval_dir.parent / 'train' / CURVES}; vs the paper: {eval_dir / COMPARISON}")
        reg = eval_dir.parent / RECORD
        r = json.loads(reg.read_text(encoding="utf-8")) if reg.is_file() else {}
        if r.get("registered") is False:  # the marker a DVC experiment's register stage leaves
            lines.append(f"  not registered: DVC experiment {r.get('experiment')} (dvc repro in the workspace "
                         "registers what it holds)")
        elif r:
            aliases = r.get("aliases", [CANDIDATE])  # the aliases the version held when registered
            lines.append(f"  registered: {r['name']} version {r['version']} ({held(aliases)}), {r['model_uri']}")
            use = f"hsnet predict PHOTO --model {tracking.alias_uri(r['name'], PRODUCTION)}"
            if PRODUCTION in aliases:
                lines.append(f"  in production: {use}")
            elif CANDIDATE in aliases:  # what a plain promote promotes
                lines.append(f"  promote it: hsnet promote --name {r['name']}; then {use}")
            elif PREVIOUS in aliases:  # production before the present one
                lines.append(f"  production before: hsnet promote --name {r['name']} --rollback puts it back")
            else:
                lines.append(f"  promote it: hsnet promote --name {r['name']} --version {r['version']}; then {use}")
    if not lines:
        return f"no evaluated runs under {runs}/"
    lines.append(f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{tracking.DEFAULT_STORE.as_posix()} "
                 "(or bash mlflow/server.sh)")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        print(summarize(sys.argv[1] if len(sys.argv) > 1 else "runs"), flush=True)
    except BrokenPipeError:  # `python -m hsnet.summary runs | head`
        from .logs import reader_gone, stdout_gone

        if not stdout_gone():
            raise
        sys.exit(reader_gone())
