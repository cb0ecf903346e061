"""Reproduce the paper's tables as DVC experiments, and collect them into its layouts.

* ``ablation(dataset)``: Table 6's eight configurations (DIB, FGAL, KTL on/off; all off is
  the Inception-ResNet-V1 baseline), each ``dvc exp run --temp evaluate@DATASET -S ...`` on
  the same data and splits (in a temporary copy, so the workspace's params stay as they are). Configurations with KTL need the stem weights: when they can't be
  found those configurations are reported as skipped, never run without them.
* ``datasets(names)``: the paper's setting for each dataset (Tables 2-5), one experiment.
* ``report(out)``: every finished experiment, from ``dvc exp show``, in the paper's tables
  beside its numbers, the confusion matrices, a bar chart of the ablation, and a list of
  what is missing and how to get it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from . import params as params_mod
from .errors import HSNetError
from .io import atomic_path, write_text

log = logging.getLogger(__name__)

# Table 6, in the paper's row order: (DIB, FGAL, KTL) -> accuracy on RAF-DB (%)
TABLE6 = {
    (False, False, False): 84.54, (True, False, False): 85.10, (False, True, False): 85.73,
    (False, False, True): 85.26, (True, True, False): 86.21, (True, False, True): 86.05,
    (False, True, True): 86.46, (True, True, True): 86.67,
}
CONFIGS = list(TABLE6)
PAPER_DATASETS = ("rafd", "kdef", "ferg", "rafdb")
# Tables 2-5: dataset -> (accuracy, mean accuracy or None)
PAPER_TABLES = {"rafd": ("Table 2", 99.88, None), "kdef": ("Table 3", 93.35, None),
                "ferg": ("Table 4", 99.35, None), "rafdb": ("Table 5", 86.67, 76.89)}


def config_name(cfg: tuple[bool, bool, bool]) -> str:
    return "dib{}-fgal{}-ktl{}".format(*(int(c) for c in cfg))


def exp_name(dataset: str, cfg: tuple[bool, bool, bool]) -> str:
    return f"ablation-{dataset}-{config_name(cfg)}"


def _dvc(args: list[str], repo: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # queued experiments run in temporary copies: an absolute tracking URI keeps them in one store
    if "MLFLOW_TRACKING_URI" not in env:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{(repo / 'mlflow' / 'mlflow.db').resolve()}"
        (repo / "mlflow").mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise HSNetError(f"dvc {' '.join(args)} failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def _check_repo(repo: Path, dataset: str, params_path: Path) -> dict:
    if not (repo / "dvc.yaml").is_file() or not (repo / ".dvc").is_dir():
        raise HSNetError(f"{repo.resolve()} is not the project's DVC repository (no dvc.yaml/.dvc); run from its root")
    cfg = params_mod.resolve(params_path, dataset)  # unknown dataset: a clear error
    raw = repo / "data" / "raw" / dataset
    if not raw.is_dir() or not any(raw.iterdir()):
        raise HSNetError(f"data/raw/{dataset} is missing or empty: put the {dataset} files there as the README's "
                         "table says (or dvc pull), then rerun")
    return cfg


def ktl_weights_problem(stem_weights: str | None) -> str | None:
    """Why the KTL stem weights can't be used, or None when they can be found."""
    from .model.ktl import vggface2_cache_path

    source = stem_weights or "vggface2"
    if source == "vggface2":
        path = vggface2_cache_path()
        return None if path.is_file() else (
            f"the VGGFace2 stem weights are not in {path} (facenet-pytorch's cache); copy them there or "
            "pass --stem-weights FILE|s3://...")
    if str(source).startswith("s3://"):
        return None  # read when training starts; a missing object fails that run with a clear error
    return None if Path(source).is_file() else f"stem weights file {source} does not exist"


def _set_args(dataset: str, cfg: tuple[bool, bool, bool], stem_weights: str | None) -> list[str]:
    dib, fgal, ktl = cfg
    args = ["-S", f"datasets_to_run=[{dataset}]"]
    for key, value in (("dib", dib), ("fgal", fgal), ("ktl", ktl)):
        args += ["-S", f"++datasets.{dataset}.model.{key}={str(value).lower()}"]
    if stem_weights and ktl:
        args += ["-S", f"++datasets.{dataset}.model.stem_weights={stem_weights}"]
    return args


def _existing_experiments(repo: Path) -> set[str]:
    proc = _dvc(["exp", "list", "--name-only", "-A"], repo, check=False)
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}


def ablation(dataset: str, *, repo: str | os.PathLike = ".", params_path: str = "params.yaml",
             stem_weights: str | None = None, queue: bool = False, jobs: int | None = None) -> dict:
    """Run (or queue) Table 6's eight configurations on ``dataset`` as DVC experiments."""
    repo = Path(repo)
    cfg = _check_repo(repo, dataset, repo / params_path)
    weights = stem_weights or cfg["model"].get("stem_weights")
    problem = ktl_weights_problem(weights)
    existing = _existing_experiments(repo)
    result = {"dataset": dataset, "ran": [], "queued": [], "skipped": {}, "failed": {}}
    for c in CONFIGS:
        name = exp_name(dataset, c)
        if c[2] and problem:
            result["skipped"][name] = f"KTL on, but {problem}"
            log.warning("skipping %s: KTL on, but %s", name, problem)
            continue
        if name in existing:
            _dvc(["exp", "remove", name], repo, check=False)
        args = ["exp", "run", f"evaluate@{dataset}", "--name", name, *_set_args(dataset, c, stem_weights)]
        if queue:
            _dvc(args + ["--queue"], repo)
            result["queued"].append(name)
            continue
        log.info("running %s (%d/%d)", name, CONFIGS.index(c) + 1, len(CONFIGS))
        proc = _dvc(args + ["--temp"], repo, check=False)  # in a copy: the workspace keeps its params
        if proc.returncode != 0:
            result["failed"][name] = (proc.stderr or proc.stdout).strip()[-1500:]
            log.error("%s failed: %s", name, result["failed"][name][-500:])
        else:
            result["ran"].append(name)
    if queue and jobs:
        _dvc(["exp", "run", "--run-all", "--jobs", str(jobs)], repo)
        result["ran"], result["queued"] = result["queued"], []
    return result


def datasets(names: list[str], *, repo: str | os.PathLike = ".", params_path: str = "params.yaml",
             queue: bool = False) -> dict:
    """The paper's setting (DIB+FGAL+KTL, its input sizes and recipe) on each dataset: one experiment each."""
    repo = Path(repo)
    result = {"ran": [], "queued": [], "missing": {}, "failed": {}}
    for name in names:
        try:
            cfg = _check_repo(repo, name, repo / params_path)
        except HSNetError as exc:
            result["missing"][name] = str(exc)
            log.warning("%s", exc)
            continue
        problem = ktl_weights_problem(cfg["model"].get("stem_weights")) if cfg["model"].get("ktl", True) else None
        if problem:
            result["missing"][name] = f"KTL is on for {name}, but {problem}"
            continue
        exp = f"paper-{name}"
        if exp in _existing_experiments(repo):
            _dvc(["exp", "remove", exp], repo, check=False)
        args = ["exp", "run", f"evaluate@{name}", "--name", exp, "-S", f"datasets_to_run=[{name}]"]
        proc = _dvc(args + (["--queue"] if queue else ["--temp"]), repo, check=False)
        if proc.returncode != 0:
            result["failed"][name] = (proc.stderr or proc.stdout).strip()[-1500:]
        else:
            result["queued" if queue else "ran"].append(exp)
    return result


# --- the report --------------------------------------------------------------------------------

def collect(repo: str | os.PathLike = ".") -> list[dict]:
    """Every experiment (and the workspace) with its dataset, model switches and test metrics."""
    repo = Path(repo)
    proc = _dvc(["exp", "show", "-A", "--json"], repo)
    rows = []

    def full_metrics(rev: str, path: str, m: dict) -> dict:
        """DVC's exp show leaves out list values (the confusion matrix): read the file at that commit."""
        if m.get("confusion_matrix") is not None:
            return m
        try:
            if rev == "workspace":
                text = (repo / path).read_text()
            else:
                text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True,
                                      check=True).stdout
            return {**m, **json.loads(text)}
        except (OSError, subprocess.CalledProcessError, ValueError):
            return m

    def add(entry: dict, name: str | None):
        data = entry.get("data") or {}
        p = (((data.get("params") or {}).get("params.yaml") or {}).get("data")) or {}
        for path, metrics in (data.get("metrics") or {}).items():
            m = (metrics or {}).get("data")
            if not m or not path.endswith("eval/metrics.json") or "accuracy" not in m:
                continue
            m = full_metrics(entry.get("rev") or "workspace", path, m)
            dataset = m.get("dataset") or Path(path).parent.parent.name
            model = m.get("model") or ((p.get("datasets") or {}).get(dataset) or {}).get("model") or {}
            rows.append({"experiment": name or entry.get("rev"), "rev": entry.get("rev"),
                         "timestamp": data.get("timestamp") or "", "dataset": dataset,
                         "config": tuple(bool(model.get(k, True)) for k in ("dib", "fgal", "ktl")),
                         "accuracy": m["accuracy"], "mean_accuracy": m.get("mean_accuracy"),
                         "classes": m.get("classes") or list(m.get("per_class_accuracy", {})),
                         "confusion_matrix": m.get("confusion_matrix"), "images": m.get("images")})

    for baseline in json.loads(proc.stdout or "[]"):
        add(baseline, baseline.get("name") or baseline.get("rev"))
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                add(rev, rev.get("name") or exp.get("name"))
    return rows


def _latest(rows: list[dict]) -> dict:
    return sorted(rows, key=lambda r: (r["timestamp"] or "", r["experiment"] or ""))[-1]


def _confusion_md(row: dict) -> list[str]:
    classes, cm = row["classes"], row["confusion_matrix"]
    if not cm or not classes:
        return []
    lines = ["| actual \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    lines += [f"| **{c}** | " + " | ".join(str(v) for v in r) + " |" for c, r in zip(classes, cm)]
    return lines


def _bar_chart(rows: dict, dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [" ".join(n for n, on in zip(("DIB", "FGAL", "KTL"), c) if on) or "baseline" for c in CONFIGS]
    ours = [rows[c]["accuracy"] * 100 if c in rows else 0 for c in CONFIGS]
    paper = [TABLE6[c] for c in CONFIGS]
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = range(len(CONFIGS))
    ax.bar([x - 0.2 for x in xs], ours, width=0.4, label=f"this project ({dataset})")
    ax.bar([x + 0.2 for x in xs], paper, width=0.4, label="paper (RAF-DB)", alpha=0.6)
    for x, c in zip(xs, CONFIGS):
        if c not in rows:
            ax.text(x - 0.2, 1, "missing", rotation=90, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Ablation (Table 6 layout) on {dataset}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def report(out: str | os.PathLike, *, repo: str | os.PathLike = ".", rows: list[dict] | None = None) -> dict:
    """Write the paper's table layouts (markdown) with this project's numbers; returns what is missing."""
    out = Path(out)
    rows = collect(repo) if rows is None else rows
    ablation_rows = [r for r in rows if str(r["experiment"]).startswith("ablation-")]
    lines = ["# Reproducing HSNet (Fan et al. 2022)", "",
             "Generated by `hsnet reproduce report` from the DVC experiments of this repository "
             "(`dvc exp show`). Accuracy is eq. 22, mean accuracy eq. 23, on each dataset's test split.", ""]
    missing: list[str] = []

    lines += ["## Tables 2-5: HSNet on each dataset", "",
              "| table | dataset | acc. (%) | paper acc. (%) | diff. | mAcc. (%) | paper mAcc. (%) | experiment |",
              "|---|---|---|---|---|---|---|---|"]
    for dataset in PAPER_DATASETS:
        table, p_acc, p_macc = PAPER_TABLES[dataset]
        found = [r for r in rows if r["dataset"] == dataset and r["config"] == (True, True, True)
                 and not str(r["experiment"]).startswith("ablation-")]
        if not found:
            lines.append(f"| {table} | {dataset} | – | {p_acc:.2f} | – | – | {p_macc or '–'} | missing |")
            missing.append(f"{dataset} (Tables 2-5): no finished run. Put the data in data/raw/{dataset}, "
                           f"then `hsnet reproduce datasets --datasets {dataset}`")
            continue
        r = _latest(found)
        acc, macc = r["accuracy"] * 100, (r["mean_accuracy"] or 0) * 100
        lines.append(f"| {table} | {dataset} | {acc:.2f} | {p_acc:.2f} | {acc - p_acc:+.2f} | {macc:.2f} | "
                     f"{p_macc if p_macc is not None else '–'} | `{r['experiment']}` |")
    lines.append("")

    charts = {}
    for dataset in sorted({r["dataset"] for r in ablation_rows}) or ["rafdb"]:
        by_cfg = {}
        for c in CONFIGS:
            found = [r for r in ablation_rows if r["dataset"] == dataset and r["config"] == c]
            if found:
                by_cfg[c] = _latest(found)
        note = "" if dataset == "rafdb" else (f" The paper's column is RAF-DB's; {dataset} is another dataset, "
                                              "so compare the ordering of the rows, not the numbers.")
        lines += [f"## Table 6: ablation on {dataset}", "", "Rows in the paper's order; ✓ = on, ✗ = off. All off "
                  "is the Inception-ResNet-V1 baseline." + note, "",
                  "| DIB | FGAL | KTL | acc. (%) | paper acc. (%) | diff. | experiment |", "|---|---|---|---|---|---|---|"]
        for c in CONFIGS:
            marks = " | ".join("✓" if on else "✗" for on in c)
            if c in by_cfg:
                acc = by_cfg[c]["accuracy"] * 100
                lines.append(f"| {marks} | {acc:.2f} | {TABLE6[c]:.2f} | {acc - TABLE6[c]:+.2f} | "
                             f"`{by_cfg[c]['experiment']}` |")
            else:
                lines.append(f"| {marks} | – | {TABLE6[c]:.2f} | – | missing |")
                missing.append(f"ablation {dataset} {config_name(c)}: no finished run"
                               + (" (KTL needs the VGGFace2 stem weights; see the README)" if c[2] else "")
                               + f". Run `hsnet reproduce ablation --dataset {dataset}`")
        lines.append("")
        if ablation_rows:
            chart = out.with_name(f"{out.stem}-ablation-{dataset}.png")
            _bar_chart(by_cfg, dataset, chart)
            charts[dataset] = str(chart)
            lines += [f"![ablation accuracy on {dataset}]({chart.name})", ""]
        for c, r in by_cfg.items():
            cm = _confusion_md(r)
            if cm:
                lines += [f"<details><summary>confusion matrix: {dataset} {config_name(c)} "
                          f"({r['images']} test images)</summary>", "", *cm, "", "</details>", ""]

    lines += ["## Missing runs", ""] + ([f"- {m}" for m in missing] or ["None: every row has a finished run."])
    write_text(out, "\n".join(lines) + "\n")
    return {"out": str(out), "missing": missing, "charts": charts, "rows": len(rows)}
