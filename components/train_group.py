from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_evaluate_group(dataset: str, params: dict, mlflow_tracking_uri: str, crops: Input[Dataset], runs: list,
                         models: Output[Model], evaluations: Output[Artifact], checkpoint_uri: str = "",
                         checkpoint_every_s: float = 300.0):
    """Several ablation runs on one GPU: trained side by side (one process each), then each evaluated
    on the test split (hsnet.concurrent.train_and_evaluate). ``runs``: items as the ablation's
    ({"model": {"dib": ..., ...}, "seed": N}). ``models``: RUN/best.pt, history.json, params.yaml per
    run; ``evaluations``: RUN/metrics.json (and the evaluation's other files) per run, and runs.json
    (every run's record: exit code, seconds, accuracy or what failed).
    ``checkpoint_uri``: durable checkpoints per run (as train_model), so a restarted pod resumes
    them all. The step fails only when no run finished: a failed run among finished ones is a
    record (runs.json, and the report's missing runs), not the loss of the others."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from components.convert import RUN_ID_ENV, params_for, start_step
    from hsnet import durable
    from hsnet.checkpoint import BEST
    from hsnet.concurrent import train_and_evaluate
    from hsnet.errors import HSNetError
    from hsnet.io import write_json
    from hsnet.paper import SWITCHES
    from hsnet.reproduce import exp_name

    start_step(mlflow_tracking_uri)
    settings = {}
    for run in runs:
        if not isinstance(run, dict) or set(run) - {"model", "seed"}:
            raise HSNetError(f"runs item {run!r}: expected {{'model': {{'dib': ..., 'fgal': ..., 'ktl': ...}}, "
                             "'seed': N}")
        overrides = {"model": run.get("model") or {}}
        if run.get("seed", -1) != -1:  # -1: params' train.seed (as train_model); the schema checks the rest
            overrides["train"] = {"seed": run["seed"]}
        p = params_for(params, dataset, overrides)
        name = exp_name(dataset, tuple(getattr(p.model, k) for k in SWITCHES), p.train.seed)
        if name in settings:
            raise HSNetError(f"runs {runs}: {name} is given twice")
        settings[name] = p
    run_id = os.environ.get(RUN_ID_ENV, "")
    uris = {name: durable.run_prefix(checkpoint_uri, run_id, p) for name, p in settings.items()} \
        if checkpoint_uri and run_id else None
    with tempfile.TemporaryDirectory(prefix="train-group-") as work:
        records = train_and_evaluate(crops.path, settings, work, checkpoint_uris=uris,
                                     checkpoint_every_s=checkpoint_every_s)
        for name, record in records.items():
            if "accuracy" not in record:
                continue
            for src, dst, files in ((Path(work) / name / "train", Path(models.path) / name, (BEST, "history.json")),
                                    (Path(work) / name / "eval", Path(evaluations.path) / name, None)):
                dst.mkdir(parents=True, exist_ok=True)
                for f in files or [f.name for f in src.iterdir() if f.is_file()]:
                    shutil.copyfile(src / f, dst / f)
            shutil.copyfile(Path(work) / name / "params.yaml", Path(models.path) / name / "params.yaml")
        write_json(Path(evaluations.path) / "runs.json", records)
    failed = {n: r.get("error") for n, r in records.items() if "accuracy" not in r}
    if len(failed) == len(records):
        raise HSNetError(f"no run of this group finished: {failed} (see each run's output above)")
    models.metadata.update(dataset=dataset, runs=sorted(settings), failed=sorted(failed))
