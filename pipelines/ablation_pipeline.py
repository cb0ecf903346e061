"""Table 6 on a cluster: the eight DIB/FGAL/KTL configurations x seeds, trained in parallel, one GPU each.

fetch -> import -> validate -> crop once, then a ParallelFor over ``runs`` (by default the eight
configurations x train.seed 0, 1, 2): train (with ``model.dib/fgal/ktl`` and ``train.seed`` set)
-> evaluate, every run on the same crops and splits; then one report step collects every
evaluation into Table 6 as ``hsnet reproduce report`` writes it: per row mean ± sd over seeds,
n and a 95% interval, and which of the paper's orderings the runs support (Markdown artifact).
With ``runs_per_gpu`` > 1 the runs go in groups of that many, each group one GPU pod that
trains its runs side by side (one process each: components/train_group.py, hsnet.concurrent)
and evaluates them; the report is the same.
A failed run fails its task (its train task; with groups, its group once the group's other runs
have finished), and the report runs only when every run finished: Kubeflow caches tasks that
succeeded, so a failure recorded as a success would be reused by every later submission and its
run never trained again; and Argo stops starting a loop's other iterations after one fails
(kubeflow/pipelines#7330), so a report of whatever finished would be a report of an arbitrary
subset. Fix the cause and Retry the run: finished tasks are kept, finished runs of a failed group
resume from their checkpoints, and only what failed (or never started) trains.
Compile: ``python -m pipelines.compile``; upload ``pipelines/ablation_pipeline.yaml``.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components import IMAGE, SLIM_IMAGE
from components.train_group import train_evaluate_group
from hsnet.paper import CONFIGS, TABLE6_DATASET, switches
from hsnet.reproduce import DEFAULT_SEEDS

from . import DEFAULT_CHECKPOINT_URI, DEFAULT_MLFLOW_URI, RAW_PREFIX
from .hsnet_pipeline import DEFAULT_PARAMS, _secrets, prepare_crops, step, train_and_evaluate, with_run_id

ABLATION_RUNS = [{"model": switches(c), "seed": seed} for seed in range(DEFAULT_SEEDS) for c in CONFIGS]
PARALLEL_GPUS = 8


@dsl.component(base_image=SLIM_IMAGE, install_kfp_package=False)
def group_runs(runs: list, runs_per_gpu: int, checkpoint_uri: str) -> list:
    """``runs`` in groups of ``runs_per_gpu``: one GPU pod each. Refuses an empty ``checkpoint_uri``
    (it runs right after source-version, whose run_items it groups, beside fetch): a group with a failed run fails and is retried,
    and without checkpoints every retry would train the group's finished runs again."""
    from components.convert import restore_ints
    from hsnet.concurrent import groups_of
    from hsnet.errors import HSNetError

    if not checkpoint_uri:
        raise HSNetError("runs_per_gpu > 1 needs checkpoint_uri (an s3:// prefix, as by default): a group whose "
                         "run failed fails and is retried, and without checkpoints each retry trains its finished "
                         "runs again")
    return groups_of(restore_ints(runs), restore_ints(runs_per_gpu))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_report(dataset: str, evaluations: Input[List[Artifact]], table: Output[Markdown]):
    """Table 6 from the evaluations' metrics.json: mean ± sd, n, 95% interval per row, the paper's orderings.
    An evaluation is one run's (metrics.json at its root) or a GPU group's (RUN/metrics.json, and
    runs.json: every run's record; a group with a failed run fails, so here they all finished)."""
    from pathlib import Path

    from hsnet.reproduce import ablation_section, evaluation_rows

    rows, failed = evaluation_rows([e.path for e in evaluations])
    lines, missing = ablation_section(rows, dataset)
    lines += ["## Missing runs", ""] + ([f"- {m}" for m in failed + missing] or ["None: every row has finished runs."])
    Path(table.path).write_text("\n".join(lines) + "\n")


@dsl.pipeline(name="hsnet-ablation",
              description="HSNet Table 6: the DIB/FGAL/KTL configurations x seeds in parallel, with intervals")
def ablation_pipeline(
    dataset: str = TABLE6_DATASET,
    raw_source: str = RAW_PREFIX + TABLE6_DATASET,
    dvc_path: str = "",
    dvc_rev: str = "",
    params: dict = DEFAULT_PARAMS,
    mlflow_tracking_uri: str = DEFAULT_MLFLOW_URI,
    runs: list = ABLATION_RUNS,
    checkpoint_uri: str = DEFAULT_CHECKPOINT_URI,
    runs_per_gpu: int = 1,
):
    """``runs``: one item per training, {"model": {"dib": ..., "fgal": ..., "ktl": ...}, "seed": N}.
    The first step fails when a run has KTL on and params give no stem_weights file or s3:// URI.
    ``runs_per_gpu``: 1, one pod (one GPU) per run, train then evaluate; more, the runs in groups of
    that many, each group one pod that trains its runs side by side on its GPU and evaluates them
    (one run takes under half a GiB of GPU memory and leaves most of a large GPU idle: docs/performance.md,
    section 8)."""
    crops, settings = prepare_crops(dataset, raw_source, dvc_path, dvc_rev, params, "cpu", runs=runs,
                                    run={"mlflow_tracking_uri": mlflow_tracking_uri, "checkpoint_uri": checkpoint_uri})
    with dsl.If(runs_per_gpu > 1, name="runs-share-gpus"):
        groups = step(group_runs(runs=settings["run_items"], runs_per_gpu=runs_per_gpu, checkpoint_uri=checkpoint_uri),
                      "group")
        with dsl.ParallelFor(items=groups.output, parallelism=PARALLEL_GPUS) as group:
            shared = step(_secrets(train_evaluate_group(dataset=dataset, params=settings["train_evaluate_settings"],
                                                        mlflow_tracking_uri=mlflow_tracking_uri, crops=crops,
                                                        runs=group, checkpoint_uri=checkpoint_uri), mlflow=True),
                          "train-group", gpu=True)
            with_run_id(shared)
        step(ablation_report(dataset=dataset, evaluations=dsl.Collected(shared.outputs["evaluations"])), "report") \
            .set_caching_options(False)
    with dsl.Else(name="one-run-per-gpu"):
        # run_items: runs with each run's seed and stem weights' version (a KTL-off run's cache key
        # doesn't change with the stem weights)
        with dsl.ParallelFor(items=settings["run_items"], parallelism=PARALLEL_GPUS) as run:
            _, evaluated = train_and_evaluate(dataset, settings, mlflow_tracking_uri, crops,
                                              model_overrides=run.model, seed=run.seed,
                                              checkpoint_uri=checkpoint_uri, stem_version=run.stem_version)
        step(ablation_report(dataset=dataset, evaluations=dsl.Collected(evaluated.outputs["report"])), "report") \
            .set_caching_options(False)
