"""Table 6 on a cluster: the eight DIB/FGAL/KTL configurations x seeds, trained in parallel, one GPU each.

fetch -> import -> validate -> crop once, then a ParallelFor over ``runs`` (by default the eight
configurations x train.seed 0, 1, 2): train (with ``model.dib/fgal/ktl`` and ``train.seed`` set)
-> evaluate, every run on the same crops and splits; then one report step collects every
evaluation into Table 6 as ``hsnet reproduce report`` writes it: per row mean ± sd over seeds,
n and a 95% interval, and which of the paper's orderings the runs support (Markdown artifact).
Compile: ``python -m pipelines.compile``; upload ``pipelines/ablation_pipeline.yaml``.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from components import IMAGE
from hsnet.paper import CONFIGS, switches
from hsnet.reproduce import DEFAULT_SEEDS

from .hsnet_pipeline import DEFAULT_CHECKPOINT_URI, DEFAULT_PARAMS, prepare_crops, step, train_and_evaluate

ABLATION_RUNS = [{"model": switches(c), "seed": seed} for seed in range(DEFAULT_SEEDS) for c in CONFIGS]
PARALLEL_GPUS = 8


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ablation_report(dataset: str, evaluations: Input[List[Artifact]], table: Output[Markdown]):
    """Table 6 from the evaluations' metrics.json: mean ± sd, n, 95% interval per row, the paper's orderings."""
    import json
    from pathlib import Path

    from hsnet.reproduce import ablation_section, run_row

    rows = [run_row(json.loads((Path(e.path) / "metrics.json").read_text()), experiment=f"run {i}")
            for i, e in enumerate(evaluations)]
    lines, missing = ablation_section(rows, dataset)
    lines += ["## Missing runs", ""] + ([f"- {m}" for m in missing] or ["None: every row has finished runs."])
    Path(table.path).write_text("\n".join(lines) + "\n")


@dsl.pipeline(name="hsnet-ablation",
              description="HSNet Table 6: the DIB/FGAL/KTL configurations x seeds in parallel, with intervals")
def ablation_pipeline(
    dataset: str = "rafdb",
    raw_source: str = "s3://hsnet-data/raw/rafdb",
    dvc_path: str = "",
    dvc_rev: str = "",
    params: dict = DEFAULT_PARAMS,
    mlflow_tracking_uri: str = "http://mlflow.kubeflow.svc.cluster.local:5000",
    runs: list = ABLATION_RUNS,
    checkpoint_uri: str = DEFAULT_CHECKPOINT_URI,
):
    """``runs``: one item per training, {"model": {"dib": ..., "fgal": ..., "ktl": ...}, "seed": N}.
    The first step fails when a run has KTL on and params give no stem_weights file or s3:// URI."""
    crops = prepare_crops(dataset, raw_source, dvc_path, dvc_rev, params, "cpu", runs=runs)
    with dsl.ParallelFor(items=runs, parallelism=PARALLEL_GPUS) as run:
        _, evaluated = train_and_evaluate(dataset, params, mlflow_tracking_uri, crops,
                                          model_overrides=run.model, seed=run.seed, checkpoint_uri=checkpoint_uri)
    step(ablation_report(dataset=dataset, evaluations=dsl.Collected(evaluated.outputs["report"])), "report") \
        .set_caching_options(False)
