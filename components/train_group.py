from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_evaluate_group(dataset: str, params: dict, mlflow_tracking_uri: str, crops: Input[Dataset], runs: list,
                         models: Output[Model], evaluations: Output[Artifact], checkpoint_uri: str = "",
                         checkpoint_every_s: float = -1.0):
    """Several ablation runs on one GPU: trained side by side (one process each), then each evaluated
    on the test split (hsnet.concurrent.train_and_evaluate). ``runs``: items as the ablation's
    ({"model": {"dib": ..., ...}, "seed": N}). ``models``: RUN/ per run (best.pt, history.json,
    train_summary.json and the params.yaml it was trained with); ``evaluations``: RUN/metrics.json
    (and the evaluation's other files) per run, and runs.json (every run's record: exit code,
    seconds, accuracy or what failed).
    ``checkpoint_uri``, ``checkpoint_every_s``: durable checkpoints per run (as train_model; a
    negative interval is hsnet.durable.INTERVAL_S), so a restarted pod resumes them all. Every run
    trains to its end whatever the others do, and the outputs are written; then
    the step fails if any run failed: Kubeflow caches a task that succeeded, so a group that
    succeeded with a failed run would be reused as it is by every later submission and its run
    never trained again. A retry of the pipeline run (same run id) resumes the finished runs from
    their checkpoints as finished and trains only the failed ones. Each ``runs`` item may carry its
    ``stem_version`` (source-version's run_items): part of the cache key, and refused when the
    weights are no longer that version (components.convert.check_stem_version), as train_model."""
    import tempfile

    from components.convert import check_stem_version, checkpoint_interval, group_settings, run_id, start_step
    from hsnet import durable
    from hsnet.concurrent import export, failed, train_and_evaluate
    from hsnet.errors import HSNetError

    start_step(mlflow_tracking_uri)
    for run in runs:  # before any training: each run's weights as its cache key names them
        check_stem_version(params, dataset, (run or {}).get("model") or {}, (run or {}).get("stem_version", ""))
    settings = group_settings(params, dataset, runs)
    uris = durable.prefixes_for_run(checkpoint_uri, run_id(), settings)
    with tempfile.TemporaryDirectory(prefix="train-group-") as work:
        records = train_and_evaluate(crops.path, settings, work, checkpoint_uris=uris,
                                     checkpoint_every_s=checkpoint_interval(checkpoint_every_s))
        bad = failed(records)
        export(work, records, models.path, evaluations.path)
    models.metadata.update(dataset=dataset, runs=sorted(settings), failed=sorted(bad))
    if bad:
        raise HSNetError(f"{len(bad)} of {len(records)} runs of this group failed: "
                         + "; ".join(f"{name}: {why}" for name, why in sorted(bad.items()))
                         + " (each run's output is above). Fix the cause, then Retry the pipeline run: the finished "
                         "runs resume from their checkpoints"
                         + (" (checkpoint_uri)" if uris else " (none here: no checkpoint_uri or no run id: they train again)")
                         + " and only the failed ones train")
