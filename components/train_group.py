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

    from components.convert import RUN_ID_ENV, group_settings, start_step
    from hsnet import durable
    from hsnet.checkpoint import BEST
    from hsnet.concurrent import RUNS_FILE, failed, train_and_evaluate
    from hsnet.errors import HSNetError

    start_step(mlflow_tracking_uri)
    settings = group_settings(params, dataset, runs)
    run_id = os.environ.get(RUN_ID_ENV, "")
    uris = {name: durable.run_prefix(checkpoint_uri, run_id, p) for name, p in settings.items()} \
        if checkpoint_uri and run_id else None
    with tempfile.TemporaryDirectory(prefix="train-group-") as work:
        records = train_and_evaluate(crops.path, settings, work, checkpoint_uris=uris,
                                     checkpoint_every_s=checkpoint_every_s)
        bad = failed(records)
        for name in records.keys() - bad.keys():
            run = Path(work) / name
            shutil.copytree(run / "eval", Path(evaluations.path) / name)
            (Path(models.path) / name).mkdir(parents=True)
            for src in (run / "train" / BEST, run / "train" / "history.json", run / "params.yaml"):
                shutil.copyfile(src, Path(models.path) / name / src.name)
        Path(evaluations.path).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(work) / RUNS_FILE, Path(evaluations.path) / RUNS_FILE)
    if len(bad) == len(records):
        raise HSNetError(f"no run of this group finished: {bad} (see each run's output above)")
    models.metadata.update(dataset=dataset, runs=sorted(settings), failed=sorted(bad))
