"""What a pipeline run left, per dataset: ``python -m hsnet.summary runs`` (the end of ``make pipeline``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarize(runs: str | Path = "runs") -> str:
    from .registry import held

    runs = Path(runs)
    lines = []
    for eval_dir in sorted(runs.glob("*/eval")):
        dataset = eval_dir.parent.name
        metrics_path = eval_dir / "metrics.json"
        if not metrics_path.is_file():
            continue
        m = json.loads(metrics_path.read_text())
        lines.append(f"{dataset}: test accuracy {m['accuracy']:.2%}, mean accuracy {m['mean_accuracy']:.2%} "
                     f"({m['images']} test images)")
        lines.append(f"  confusion matrix: {eval_dir / 'confusion_matrix.png'}; curves: "
                     f"{eval_dir.parent / 'train' / 'training_curves.png'}; vs the paper: {eval_dir / 'comparison.md'}")
        reg = eval_dir.parent / "registered.json"
        r = json.loads(reg.read_text()) if reg.is_file() else {}
        if r.get("registered") is False:  # the marker a DVC experiment's register stage leaves
            lines.append(f"  not registered: DVC experiment {r.get('experiment')} (dvc repro in the workspace "
                         "registers what it holds)")
        elif r:
            aliases = r.get("aliases", ["candidate"])  # the aliases the version held when registered
            lines.append(f"  registered: {r['name']} version {r['version']} ({held(aliases)}), {r['model_uri']}")
            use = f"hsnet predict PHOTO --model models:/{r['name']}@production"
            if "production" in aliases:
                lines.append(f"  in production: {use}")
            elif "candidate" in aliases:  # what a plain promote promotes
                lines.append(f"  promote it: hsnet promote --name {r['name']}; then {use}")
            elif "previous" in aliases:  # production before the present one
                lines.append(f"  production before: hsnet promote --name {r['name']} --rollback puts it back")
            else:
                lines.append(f"  promote it: hsnet promote --name {r['name']} --version {r['version']}; then {use}")
    if not lines:
        return f"no evaluated runs under {runs}/"
    lines.append("MLflow UI: mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db (or bash mlflow/server.sh)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1] if len(sys.argv) > 1 else "runs"))
