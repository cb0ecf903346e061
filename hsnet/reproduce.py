"""Reproduce the paper's tables as DVC experiments, and collect them into its layouts.

* ``ablation(dataset, seeds=K)``: Table 6's eight configurations (DIB, FGAL, KTL on/off; all
  off is the Inception-ResNet-V1 baseline), each trained K times (``train.seed`` = 0..K-1), each
  run a ``dvc exp run --temp evaluate@DATASET -S ...`` on the same data and splits (in a
  temporary copy, so the workspace's params stay as they are). Configurations with KTL need
  the stem weights: when they can't be found those configurations are reported as skipped,
  never run without them.
* ``datasets(names, seeds=K)``: the paper's setting for each dataset (Tables 2-5), K runs each.
* ``report(out)``: every finished experiment, from ``dvc exp show``, in the paper's tables
  beside its numbers: per row the mean ± standard deviation over seeds, n and a 95% interval
  (Student's t); for every pair of Table 6 rows the paper orders (A > B), whether the runs
  support that ordering, reverse it, or can't tell it from the seed-to-seed noise (Welch's
  interval for the difference); the confusion matrices, a bar chart, and a list of what is
  missing and how to get it.

Adjacent rows of Table 6 differ by 0.2-0.8 points, and one run of a configuration moves by
points between seeds and machines: a single run per row can't order them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from . import params as params_mod
from . import tracking
from .concurrent import TAIL
from .errors import HSNetError
from .io import atomic_path, write_text
from .paper import CONFIGS, DATASETS, RESULTS, SWITCHES, TABLE6, TABLE6_DATASET, difference, signed, switches

log = logging.getLogger(__name__)

DEFAULT_SEEDS = 3  # runs per configuration (train.seed = 0, 1, 2)
CONFIDENCE = 0.95
SUPPORTED, REVERSED, NOISE, TOO_FEW = "supported", "reversed", "within noise", "can't tell (n < 2)"


# --- statistics over seeds ---------------------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                    -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (real, > 0) degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` degrees of freedom, by bisection."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


def summarize(values: list[float]) -> dict:
    """n, mean, sample standard deviation and the 95% interval of the mean (Student's t, n - 1 df).
    With one value there is no spread to measure: sd and the interval are None."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "half": None, "lo": None, "hi": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half": half, "lo": mean - half, "hi": mean + half}


def compare(a: list[float], b: list[float]) -> dict:
    """Is mean(a) > mean(b) beyond the seed-to-seed noise? Welch's 95% interval for the difference
    of the means (unequal variances, Welch-Satterthwaite degrees of freedom): ``supported`` when it
    lies above 0, ``reversed`` when below, ``within noise`` when it contains 0."""
    sa, sb = summarize(a), summarize(b)
    diff = sa["mean"] - sb["mean"]
    if sa["n"] < 2 or sb["n"] < 2:
        return {"diff": diff, "lo": None, "hi": None, "df": None, "verdict": TOO_FEW}
    va, vb = sa["sd"] ** 2 / sa["n"], sb["sd"] ** 2 / sb["n"]
    se = math.sqrt(va + vb)
    if se == 0.0:  # every run of both rows gave the same number: no noise to weigh the difference against
        df, half = math.inf, 0.0
    else:
        df = (va + vb) ** 2 / (va ** 2 / (sa["n"] - 1) + vb ** 2 / (sb["n"] - 1))
        half = t_quantile(0.5 + CONFIDENCE / 2, df) * se
    lo, hi = diff - half, diff + half
    verdict = SUPPORTED if lo > 0 else REVERSED if hi < 0 else NOISE
    return {"diff": diff, "lo": lo, "hi": hi, "df": df, "verdict": verdict}


def paper_orderings(present) -> list[tuple]:
    """Every pair (A, B) of Table 6 rows in ``present`` that the paper orders A > B, in the paper's row order."""
    present = [c for c in CONFIGS if c in present]
    return [(a, b) for a in present for b in present if TABLE6[a] > TABLE6[b]]


def config_name(cfg: tuple[bool, bool, bool]) -> str:
    return "dib{}-fgal{}-ktl{}".format(*(int(c) for c in cfg))


def parse_configs(text: str | None) -> list[tuple[bool, bool, bool]]:
    """Table 6's rows named in ``text`` (comma-separated config names, e.g. ``dib1-fgal0-ktl0``), in the
    paper's order; None (no --configs): all eight. A blank list is refused: ``--configs "$ROWS"``
    with ROWS unset would otherwise start all eight."""
    if text is None:
        return list(CONFIGS)
    by_name = {config_name(c): c for c in CONFIGS}
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise HSNetError(f"--configs {text!r} names no configuration: give some of {', '.join(by_name)} "
                         "(comma-separated), or leave --configs out for all eight")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise HSNetError(f"--configs: {', '.join(map(repr, unknown))} is not a Table 6 configuration; give some of "
                         f"{', '.join(by_name)} (comma-separated; the experiments' names carry them)")
    return [c for c in CONFIGS if config_name(c) in names]


def config_label(cfg: tuple[bool, bool, bool]) -> str:
    return " + ".join(n for n, on in zip(("DIB", "FGAL", "KTL"), cfg) if on) or "baseline"


# the experiments each table is made of, by name: Table 6 the ablation's, Tables 2-5 those of
# `hsnet reproduce datasets` (the paper's recipe); any other experiment is a user's, in no table
ABLATION_PREFIX, PAPER_PREFIX = "ablation-", "paper-"


def exp_name(dataset: str, cfg: tuple[bool, bool, bool], seed: int = 0) -> str:
    return f"{ABLATION_PREFIX}{dataset}-{config_name(cfg)}-seed{seed}"


def paper_exp_name(dataset: str, seed: int = 0) -> str:
    return f"{PAPER_PREFIX}{dataset}-seed{seed}"


def _rerun_name(name: str, existing: set[str]) -> str:
    """The name a run of ``name`` gets: ``name``, or when a finished run has it, ``name-2``
    (``-3``, ...): the finished run stays until its replacement has finished (:func:`_replace`)."""
    if name not in existing:
        return name
    n = 2
    while f"{name}-{n}" in existing:
        n += 1
    return f"{name}-{n}"


def _replace(repo: Path, name: str, run_as: str) -> str:
    """After ``run_as``, a re-run of ``name``, finished: the old run removed and the new one named
    ``name``. Returns the name it has (``run_as`` where DVC refused: the report takes a seed's latest)."""
    if run_as == name:
        return name
    if _dvc(["exp", "remove", name], repo, check=False).returncode == 0 \
            and _dvc(["exp", "rename", run_as, name], repo, check=False).returncode == 0:
        return name
    log.warning("%s finished, but DVC did not replace %s with it: both are kept, the report takes the latest",
                run_as, name)
    return run_as


def _seeds(seeds: int | None) -> range:
    if seeds is None:
        return range(DEFAULT_SEEDS)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise HSNetError(f"--seeds {seeds!r}: give the number of runs per configuration, 1 or more "
                         f"(default {DEFAULT_SEEDS}; 1 run can't tell a difference from noise)")
    return range(seeds)


def _dvc(args: list[str], repo: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``dvc ARGS`` in ``repo``, in a process group of its own. Stopped itself (Ctrl-C, SIGTERM), it
    stops dvc as a terminal's Ctrl-C would: SIGINT to the group (the stage's ``hsnet train`` saves
    and stops, dvc then cleans up its temporary copy), 60 s for that, then SIGKILL to the group.
    subprocess.run would SIGKILL dvc alone at once and leave its training running, an orphan."""
    import signal

    cmd = [sys.executable, "-m", "dvc", *args]
    with subprocess.Popen(cmd, cwd=repo, env=_dvc_env(repo), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as child:
        try:
            stdout, stderr = child.communicate()
        except BaseException:
            for sig, wait in ((signal.SIGINT, 60), (signal.SIGKILL, None)):
                try:
                    os.killpg(child.pid, sig)
                    child.communicate(timeout=wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
            raise
    proc = subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise HSNetError(f"dvc {' '.join(args)} failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def _dvc_env(repo: Path) -> dict:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # queued experiments run in temporary copies: an absolute tracking URI keeps them in one store
    if "MLFLOW_TRACKING_URI" not in env:
        store = (repo / tracking.DEFAULT_STORE).resolve()
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
        store.parent.mkdir(exist_ok=True)
    return env


def _check_repo(repo: Path, dataset: str, params_path: Path) -> params_mod.Params:
    if not (repo / "dvc.yaml").is_file() or not (repo / ".dvc").is_dir():
        raise HSNetError(f"{repo.resolve()} is not the project's DVC repository (no dvc.yaml/.dvc); run from its root")
    cfg = params_mod.Params.resolve(params_path, dataset)  # unknown dataset or bad setting: a clear error
    raw = repo / "data" / "raw" / dataset
    if not raw.is_dir() or not any(raw.iterdir()):
        raise HSNetError(f"data/raw/{dataset} is missing or empty: put the {dataset} files there as the README's "
                         "table says (or dvc pull), then rerun")
    return cfg


def ktl_weights_problem(stem_weights: str | None) -> str | None:
    """Why the KTL stem weights can't be used, or None when they can be found."""
    from .model.ktl import vggface2_cache_path

    source = params_mod.VGGFACE2
    if stem_weights:  # as training will read it: the keyword in any case ("VGGFace2 ")
        source = params_mod.section(params_mod.ModelParams, {"stem_weights": stem_weights}).stem_weights
    if source == params_mod.VGGFACE2:
        path = vggface2_cache_path()
        return None if path.is_file() else (
            f"the VGGFace2 stem weights are not in {path} (facenet-pytorch's cache); copy them there or "
            "pass --stem-weights FILE|s3://...")
    if str(source).startswith("s3://"):
        return None  # read when training starts; a missing object fails that run with a clear error
    return None if Path(source).is_file() else f"stem weights file {source} does not exist"


def _set_args(dataset: str, cfg: tuple[bool, bool, bool], stem_weights: str | None, seed: int) -> list[str]:
    args = ["-S", f"datasets_to_run=[{dataset}]", "-S", f"++datasets.{dataset}.train.seed={seed}"]
    for key, value in switches(cfg).items():
        args += ["-S", f"++datasets.{dataset}.model.{key}={str(value).lower()}"]
    if stem_weights and switches(cfg)["ktl"]:
        args += ["-S", f"++datasets.{dataset}.model.stem_weights={stem_weights}"]
    return args


def _existing_experiments(repo: Path) -> set[str]:
    proc = _dvc(["exp", "list", "--name-only", "-A"], repo, check=False)
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}


def ablation(dataset: str, *, repo: str | os.PathLike = ".", params_path: str = params_mod.PARAMS_FILE,
             stem_weights: str | None = None, queue: bool = False, jobs: int | None = None,
             seeds: int | None = None, concurrent: int | None = None,
             configs: Sequence[tuple[bool, bool, bool]] | None = None) -> dict:
    """Run (or queue) Table 6's eight configurations (or ``configs`` of them: :func:`parse_configs`) on
    ``dataset`` as DVC experiments, ``seeds`` runs each (train.seed = 0..seeds-1), one at a time, or
    ``concurrent`` at a time sharing the machine's GPU, or spread over its GPUs (:mod:`hsnet.concurrent`)."""
    from .concurrent import Job, check_concurrent, run_jobs, visible_gpus

    concurrent = check_concurrent(concurrent) if concurrent is not None else 1
    chosen = set(CONFIGS if configs is None else configs)
    if chosen - set(CONFIGS):
        raise HSNetError(f"configs: {sorted(chosen - set(CONFIGS))} not in Table 6 (DIB, FGAL, KTL switches)")
    rows = [c for c in CONFIGS if c in chosen]
    if not rows:
        raise HSNetError("no Table 6 configuration to run: give at least one (--configs)")
    runs_at_once: list = []
    renamed: dict[str, str] = {}  # the name a concurrent run has -> the experiment it re-runs
    repo = Path(repo)
    seed_range = _seeds(seeds)
    cfg = _check_repo(repo, dataset, repo / params_path)
    weights = stem_weights or cfg.model.stem_weights
    problem = ktl_weights_problem(weights)
    existing = _existing_experiments(repo)
    result = {"dataset": dataset, "ran": [], "queued": [], "skipped": {}, "failed": {}}
    total = len(rows) * len(seed_range)
    # seed by seed: a run cut short still has every configuration at the same number of runs
    for i, (seed, c) in enumerate(((s, c) for s in seed_range for c in rows), 1):
        name = exp_name(dataset, c, seed)
        if c[2] and problem:
            result["skipped"][name] = f"KTL on, but {problem}"
            log.warning("skipping %s: KTL on, but %s", name, problem)
            continue
        run_as = _rerun_name(name, existing)  # a finished run is replaced only once its re-run finished
        args = ["exp", "run", f"evaluate@{dataset}", "--name", run_as, *_set_args(dataset, c, stem_weights, seed)]
        if queue:  # run later by dvc queue: both are kept, the report takes a seed's latest
            _dvc(args + ["--queue"], repo)
            result["queued"].append(run_as)
            continue
        if concurrent > 1:  # the locked parts of the runs (set-up, saving the result) wait for each other
            runs_at_once.append(Job(run_as, [sys.executable, "-m", "dvc", "--wait-for-lock", *args, "--temp"], repo,
                            _dvc_env(repo)))
            renamed[run_as] = name
            continue
        log.info("running %s (%d/%d)", name, i, total)
        proc = _dvc(args + ["--temp"], repo, check=False)  # in a copy: the workspace keeps its params
        if proc.returncode != 0:
            result["failed"][name] = _output(proc)
            log.error("%s failed: %s", name, "; ".join(why_failed(result["failed"][name])))
        else:
            result["ran"].append(_replace(repo, name, run_as))
    for run_as, done in run_jobs(runs_at_once, concurrent, gpus=visible_gpus()).items() if runs_at_once else ():
        if done["returncode"] == 0:
            result["ran"].append(_replace(repo, renamed[run_as], run_as))
        else:
            result["failed"][renamed[run_as]] = done["output"].strip()
    if queue and jobs:
        _dvc(["exp", "run", "--run-all", "--jobs", str(jobs)], repo)
        result["ran"], result["queued"] = result["queued"], []
    return result


FAILED_TAIL = TAIL  # characters of a failed experiment's output kept in its record, as run_jobs keeps them


def _output(proc: subprocess.CompletedProcess) -> str:
    """The end of what a dvc command printed, both streams (a stage's error may be on either)."""
    return "\n".join(filter(None, (proc.stdout, proc.stderr))).strip()[-FAILED_TAIL:]


# hsnet's own error line ("hsnet evaluate: error: ..."), or a Python traceback's last line
_CAUSE = re.compile(r"^(hsnet \w+: (error|terminated|interrupted)\b|([A-Za-z_]\w*\.)*[A-Za-z_]\w*(Error|Exception)\b)")


def why_failed(output: str) -> list[str]:
    """The lines that say why a run failed, out of all it printed: the cause (hsnet's error line or
    the exception a traceback ended with), then the last line (dvc's "failed to reproduce ...")."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    causes = [line for line in lines if _CAUSE.match(line)]
    return list(dict.fromkeys(causes[-1:] + lines[-1:]))


def datasets(names: list[str], *, repo: str | os.PathLike = ".", params_path: str = params_mod.PARAMS_FILE,
             queue: bool = False, seeds: int | None = None) -> dict:
    """The paper's setting (DIB+FGAL+KTL, its input sizes and recipe) on each dataset: ``seeds``
    experiments each (train.seed = 0..seeds-1)."""
    repo = Path(repo)
    seed_range = _seeds(seeds)
    result = {"ran": [], "queued": [], "missing": {}, "failed": {}}
    for name in names:
        try:
            cfg = _check_repo(repo, name, repo / params_path)
        except HSNetError as exc:
            result["missing"][name] = str(exc)
            log.warning("%s", exc)
            continue
        problem = ktl_weights_problem(cfg.model.stem_weights) if cfg.model.ktl else None
        if problem:
            result["missing"][name] = f"KTL is on for {name}, but {problem}"
            continue
        existing = _existing_experiments(repo)
        for seed in seed_range:
            exp = paper_exp_name(name, seed)
            run_as = _rerun_name(exp, existing)  # a finished run is replaced only once its re-run finished
            args = ["exp", "run", f"evaluate@{name}", "--name", run_as, "-S", f"datasets_to_run=[{name}]",
                    "-S", f"++datasets.{name}.train.seed={seed}"]
            proc = _dvc(args + (["--queue"] if queue else ["--temp"]), repo, check=False)
            if proc.returncode != 0:
                result["failed"][exp] = _output(proc)
            elif queue:
                result["queued"].append(run_as)
            else:
                result["ran"].append(_replace(repo, exp, run_as))
    return result


# --- the report --------------------------------------------------------------------------------

def run_row(m: dict, *, experiment: str, dataset: str | None = None, model: dict | None = None,
            seed: int | None = None, rev: str | None = None, timestamp: str = "") -> dict:
    """One finished run, from its evaluate metrics.json (``m``): what the report needs of it."""
    model = m.get("model") or model or {}
    return {"experiment": experiment, "rev": rev, "timestamp": timestamp or "", "seed": seed,
            "dataset": m.get("dataset") or dataset,
            "config": tuple(bool(model.get(k, True)) for k in SWITCHES),
            "accuracy": m["accuracy"], "mean_accuracy": m.get("mean_accuracy"),
            "classes": m.get("classes") or list(m.get("per_class_accuracy", {})),
            "confusion_matrix": m.get("confusion_matrix"), "images": m.get("images")}


def _train_seed(p: dict, dataset: str) -> int | None:
    """train.seed of ``dataset`` in a params.yaml mapping; None when that mapping isn't valid params
    (an experiment made before a schema change): its run then counts as a run of unknown seed."""
    try:
        return params_mod.Params.from_mapping(p, dataset, source="dvc exp show").train.seed
    except HSNetError:
        return None


def finished(exp: dict) -> bool:
    """Whether an experiment of ``dvc exp show --json`` has finished. A running or queued one shows
    its base commit's metrics under its own name (its data's rev is "workspace"): not its result."""
    return (exp.get("executor") or {}).get("state", "success") == "success"


def collect(repo: str | os.PathLike = ".") -> list[dict]:
    """Every experiment (and the workspace) with its dataset, model switches, seed and test metrics."""
    from .evaluate import METRICS_FILE

    repo = Path(repo)
    proc = _dvc(["exp", "show", "-A", "--json"], repo)
    rows = []

    def full_metrics(rev: str, path: str, m: dict) -> dict:
        """DVC's exp show leaves out list values (the confusion matrix): read the file at that commit."""
        if m.get("confusion_matrix") is not None:
            return m
        try:
            if rev == "workspace":
                text = (repo / path).read_text(encoding="utf-8")
            else:
                text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True,
                                      check=True).stdout
            return {**m, **json.loads(text)}
        except (OSError, subprocess.CalledProcessError, ValueError):
            return m

    def add(entry: dict, name: str | None):
        data = entry.get("data") or {}
        p = (((data.get("params") or {}).get(params_mod.PARAMS_FILE) or {}).get("data")) or {}
        for path, metrics in (data.get("metrics") or {}).items():
            m = (metrics or {}).get("data")
            if not m or not path.endswith(f"eval/{METRICS_FILE}") or "accuracy" not in m:
                continue
            m = full_metrics(entry.get("rev") or "workspace", path, m)
            dataset = m.get("dataset") or Path(path).parent.parent.name
            rows.append(run_row(m, experiment=name or entry.get("rev"), dataset=dataset,
                                model=((p.get("datasets") or {}).get(dataset) or {}).get("model"),
                                seed=_train_seed(p, dataset), rev=entry.get("rev"),
                                timestamp=data.get("timestamp") or ""))

    for baseline in json.loads(proc.stdout or "[]"):
        add(baseline, baseline.get("name") or baseline.get("rev"))
        for exp in baseline.get("experiments") or []:
            if not finished(exp):
                continue
            for rev in exp.get("revs") or []:
                add(rev, rev.get("name") or exp.get("name"))
    return rows


def runs_by_config(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The runs of each configuration, one per seed (a seed run again: its latest run), in seed order.
    Rows without a seed (a Kubeflow run's) each count as one run."""
    latest: dict[tuple, dict] = {}
    unseeded: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("seed") is None:
            unseeded.setdefault(r["config"], []).append(r)
            continue
        key = (r["config"], r["seed"])
        if key not in latest or (r["timestamp"] or "", r["experiment"] or "") >= (
                latest[key]["timestamp"] or "", latest[key]["experiment"] or ""):
            latest[key] = r
    out: dict[tuple, list[dict]] = {}
    for (cfg, _), r in sorted(latest.items(), key=lambda kv: kv[0][1]):
        out.setdefault(cfg, []).append(r)
    for cfg, rs in unseeded.items():
        out.setdefault(cfg, []).extend(rs)
    return out


def _f(x: float | None, sign: bool = False) -> str:
    return "–" if x is None else (signed(x) if sign else f"{x:.2f}")


def _interval(lo: float | None, hi: float | None, sign: bool = False) -> str:
    return "–" if lo is None else f"[{_f(lo, sign)}, {_f(hi, sign)}]"


def _accuracy_interval(st: dict) -> str:
    """A mean accuracy's 95% interval, within the possible 0-100% (with few, spread runs Student's t
    reaches past 100: 73.0, 76.2 and 97.6% give [49.0, 115.5]); clipped ends are marked *."""
    if st["lo"] is None:
        return "–"
    lo, hi = max(st["lo"], 0.0), min(st["hi"], 100.0)
    return f"[{_f(lo)}{'*' if lo != st['lo'] else ''}, {_f(hi)}{'*' if hi != st['hi'] else ''}]"


def _seed_list(runs: list[dict]) -> str:
    seeds = [str(r["seed"]) for r in runs if r.get("seed") is not None]
    return ", ".join(seeds) if len(seeds) == len(runs) else f"{len(runs)} run(s)"


def _confusion_md(runs: list[dict]) -> tuple[list[str], int, int]:
    """The confusion matrix summed over the runs that have one (all on the same test split), the
    number of those runs and of the predictions in it (a run without a matrix isn't counted)."""
    classes = runs[0]["classes"]
    cms = [r["confusion_matrix"] for r in runs if r["confusion_matrix"] and r["classes"] == classes]
    if not cms or not classes:
        return [], 0, 0
    cm = [[sum(m[i][j] for m in cms) for j in range(len(classes))] for i in range(len(classes))]
    lines = ["| actual \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    lines += [f"| **{c}** | " + " | ".join(str(v) for v in r) + " |" for c, r in zip(classes, cm)]
    return lines, len(cms), sum(map(sum, cm))


def _bar_chart(by_cfg: dict[tuple, list[dict]], dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    xs = list(range(len(CONFIGS)))
    stats = {c: summarize([r["accuracy"] * 100 for r in by_cfg[c]]) for c in CONFIGS if c in by_cfg}
    ours = [stats[c]["mean"] if c in stats else 0 for c in CONFIGS]
    lowest = min([TABLE6[c] for c in CONFIGS] + [r["accuracy"] * 100 for runs in by_cfg.values() for r in runs]
                 + [stats[c]["mean"] - (stats[c]["half"] or 0) for c in stats])
    bottom = max(0.0, 5 * math.floor((lowest - 3) / 5))  # zoomed in: differences of a point must show
    ax.bar([x - 0.2 for x in xs], [v - bottom if v else 0 for v in ours], bottom=bottom, width=0.4,
           label=f"this project ({dataset}): mean, 95% interval")
    spread = [(x - 0.2, stats[c]["mean"], stats[c]["half"]) for x, c in zip(xs, CONFIGS)
              if c in stats and stats[c]["half"]]
    if spread:
        # the interval within 0-100%, as the table shows it
        yerr = [[mean - max(mean - half, 0.0) for _, mean, half in spread],
                [min(mean + half, 100.0) - mean for _, mean, half in spread]]
        ax.errorbar([p[0] for p in spread], [p[1] for p in spread], yerr=yerr, fmt="none", ecolor="black", capsize=3)
    labelled = False
    for x, c in zip(xs, CONFIGS):
        if c in by_cfg:
            ys = [r["accuracy"] * 100 for r in by_cfg[c]]
            ax.plot([x - 0.2] * len(ys), ys, "k.", markersize=4, label=None if labelled else "one run")
            labelled = True
        else:
            ax.text(x - 0.2, bottom + 0.5, "missing", rotation=90, ha="center", va="bottom", fontsize=8)
    ax.bar([x + 0.2 for x in xs], [TABLE6[c] - bottom for c in CONFIGS], bottom=bottom, width=0.4,
           label="paper (RAF-DB)", alpha=0.6)
    ax.set_xticks(xs, [config_label(c) for c in CONFIGS], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(bottom, 100)
    ax.set_title(f"Ablation (Table 6 layout) on {dataset}" + (f"; the axis starts at {bottom:.0f}%" if bottom else ""))
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def evaluation_rows(folders: list[str | os.PathLike]) -> tuple[list[dict], list[str]]:
    """The runs of the Kubeflow ablation's evaluation folders: one run's (metrics.json at its root)
    or a GPU group's (RUN/metrics.json, and hsnet.concurrent's record of the runs that failed).
    Returns the rows for :func:`ablation_section` and a line per failed run."""
    from .concurrent import RUNS_FILE, failed
    from .evaluate import METRICS_FILE

    rows, failures = [], []
    for folder in map(Path, folders):
        for path in sorted(folder.rglob(METRICS_FILE)):
            name = path.parent.name if path.parent != folder else f"run {len(rows)}"
            rows.append(run_row(json.loads(path.read_text(encoding="utf-8")), experiment=name))
        if (folder / RUNS_FILE).is_file():
            runs = json.loads((folder / RUNS_FILE).read_text(encoding="utf-8"))
            failures += [f"{n}: {why}" for n, why in failed(runs).items()]
    return rows, failures


def ablation_section(rows: list[dict], dataset: str, chart: Path | None = None) -> tuple[list[str], list[str]]:
    """Table 6 on ``dataset`` (markdown lines) from its ablation runs, and what is missing.
    ``chart``: where to draw the bar chart (linked from the section); None: no chart."""
    by_cfg = runs_by_config([r for r in rows if r["dataset"] == dataset])
    note = "" if dataset == TABLE6_DATASET else (f" The paper's column is RAF-DB's; {dataset} is another dataset, "
                                          "so compare the ordering of the rows, not the numbers.")
    lines = [f"## Table 6: ablation on {dataset}", "",
             "Rows in the paper's order; ✓ = on, ✗ = off. All off is the Inception-ResNet-V1 baseline." + note,
             "Per row: n runs (seeds), their mean test accuracy and standard deviation, and the 95% interval "
             "of the mean (Student's t, n − 1 degrees of freedom; an end marked * is cut at 0 or 100%).", "",
             "| DIB | FGAL | KTL | n | mean acc. (%) | sd | 95% interval | paper acc. (%) | diff. | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    missing = []
    values = {c: [r["accuracy"] * 100 for r in runs] for c, runs in by_cfg.items()}
    for c in CONFIGS:
        marks = " | ".join("✓" if on else "✗" for on in c)
        if c not in by_cfg:
            lines.append(f"| {marks} | 0 | – | – | – | {TABLE6[c]:.2f} | – | missing |")
            missing.append(f"ablation {dataset} {config_name(c)}: no finished run"
                           + (" (KTL needs the VGGFace2 stem weights; see the README)" if c[2] else "")
                           + f". Run `hsnet reproduce ablation --dataset {dataset} --seeds {DEFAULT_SEEDS}`")
            continue
        st = summarize(values[c])
        lines.append(f"| {marks} | {st['n']} | {_f(st['mean'])} | {_f(st['sd'])} | {_accuracy_interval(st)} | "
                     f"{TABLE6[c]:.2f} | {difference(st['mean'], TABLE6[c])} | {_seed_list(by_cfg[c])} |")
        if st["n"] < 2:
            missing.append(f"ablation {dataset} {config_name(c)}: one run, no measure of its noise. Run "
                           f"`hsnet reproduce ablation --dataset {dataset} --seeds {DEFAULT_SEEDS}`")
    lines.append("")

    pairs = paper_orderings(by_cfg)
    if pairs:
        results = [(a, b, compare(values[a], values[b])) for a, b in pairs]
        counts = {v: sum(1 for *_, r in results if r["verdict"] == v) for v in (SUPPORTED, NOISE, REVERSED, TOO_FEW)}
        lines += [f"### The paper's orderings on {dataset}", "",
                  "Each pair of rows above that Table 6 orders A > B: the difference of our means A − B, Welch's 95% "
                  "interval for it, and the verdict: **supported** (the interval lies above 0), **reversed** "
                  "(below 0), **within noise** (it contains 0: these runs can't order the two rows). Each "
                  "comparison is at 95% on its own, so among many one may pass or fail by chance; the noise "
                  "measured is seed to seed on one machine and one test split.", "",
                  "Summary: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + f" (of {len(results)}).", "",
                  "| paper: A > B | paper diff. | ours: A − B | 95% interval | verdict |", "|---|---|---|---|---|"]
        for a, b, r in results:
            lines.append(f"| {config_label(a)} > {config_label(b)} | {TABLE6[a] - TABLE6[b]:+.2f} | "
                         f"{_f(r['diff'], True)} | {_interval(r['lo'], r['hi'], True)} | {r['verdict']} |")
        lines.append("")
    if chart is not None and by_cfg:
        _bar_chart(by_cfg, dataset, chart)
        lines += [f"![ablation accuracy on {dataset}]({urllib.parse.quote(chart.name)})", ""]  # spaces, ( ): encoded
    for c in CONFIGS:
        cm, n_runs, predictions = _confusion_md(by_cfg[c]) if c in by_cfg else ([], 0, 0)
        if cm:
            lines += [f"<details><summary>confusion matrix: {dataset} {config_name(c)}, summed over "
                      f"{n_runs} run(s) ({predictions} test predictions)</summary>", "", *cm, "", "</details>", ""]
    return lines, missing


def report(out: str | os.PathLike, *, repo: str | os.PathLike = ".", rows: list[dict] | None = None) -> dict:
    """Write the paper's table layouts (markdown) with this project's numbers; returns what is missing."""
    out = Path(out)
    rows = collect(repo) if rows is None else rows
    ablation_rows = [r for r in rows if str(r["experiment"]).startswith(ABLATION_PREFIX)]
    paper_rows = [r for r in rows if r["dataset"] in DATASETS and r["config"] == (True, True, True)
                  and str(r["experiment"]).startswith(PAPER_PREFIX)]
    if not ablation_rows and not paper_rows and out.exists():
        # a fresh clone: git doesn't fetch DVC's experiments (refs/exps); its commits' own metrics (the
        # sample's) fill no table, and the report would replace the results it has with an empty one
        raise HSNetError(f"no finished run for any table in {Path(repo).resolve()} (no DVC experiment, no paper "
                         f"dataset's metrics), so {out} is kept: fetch the experiments first (dvc exp pull <git "
                         "remote> --all-commits), run them (hsnet reproduce ablation / datasets), or write to "
                         "another --out")
    lines = ["# Reproducing HSNet (Fan et al. 2022)", "",
             "Generated by `hsnet reproduce report` from the DVC experiments of this repository "
             "(`dvc exp show`). Accuracy is eq. 22, mean accuracy eq. 23, on each dataset's test split.", "",
             "A run's accuracy is one draw: it moves with the seed (`train.seed`) and with the machine "
             "(CPU model, thread count, GPU kernels), by several points on a small test set. So every row is "
             "the mean of n runs (seeds 0..n−1, `--seeds`) with its spread, and a difference between rows "
             "counts only when it is bigger than that spread. Intervals are Student's t 95% intervals of the "
             "mean; an end marked * is cut at 0 or 100%.", ""]
    missing: list[str] = []

    lines += ["## Tables 2-5: HSNet on each dataset", "",
              "| table | dataset | n | acc. (%) | sd | 95% interval | paper acc. (%) | diff. | mAcc. (%) | "
              "paper mAcc. (%) | seeds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        table, p_acc, p_macc = RESULTS[dataset]
        found = [r for r in paper_rows if r["dataset"] == dataset]
        p_macc_s = f"{p_macc:.2f}" if p_macc is not None else "–"
        again = f"`hsnet reproduce datasets --datasets {dataset} --seeds {DEFAULT_SEEDS}`"
        if not found:
            lines.append(f"| {table} | {dataset} | 0 | – | – | – | {p_acc:.2f} | – | – | {p_macc_s} | missing |")
            other = [r for r in rows if r["dataset"] == dataset and str(r["experiment"]).startswith(PAPER_PREFIX)]
            off = sorted({name for r in other for name, on in switches(r["config"]).items() if not on})
            if other:  # `reproduce datasets` ran params.yaml's setting, which isn't the paper's HSNet
                missing.append(f"{dataset} (Tables 2-5): {len(other)} finished run(s) with model "
                               f"{', '.join(off)} off, not the paper's HSNet (DIB + FGAL + KTL), so left out. "
                               f"Set {', '.join(f'model.{n}: true' for n in off)} for {dataset} in params.yaml"
                               + (" (KTL needs the VGGFace2 stem weights; see the README)" if "ktl" in off else "")
                               + f", then {again}")
            else:
                missing.append(f"{dataset} (Tables 2-5): no finished run. Put the data in data/raw/{dataset} and "
                               f"the VGGFace2 stem weights (KTL; see the README), then {again}")
            continue
        runs = runs_by_config(found)[(True, True, True)]
        st = summarize([r["accuracy"] * 100 for r in runs])
        macc = summarize([(r["mean_accuracy"] or 0) * 100 for r in runs])["mean"]
        lines.append(f"| {table} | {dataset} | {st['n']} | {_f(st['mean'])} | {_f(st['sd'])} | "
                     f"{_accuracy_interval(st)} | {p_acc:.2f} | {difference(st['mean'], p_acc)} | "
                     f"{_f(macc)} | {p_macc_s} | {_seed_list(runs)} |")
        if st["n"] < 2:
            missing.append(f"{dataset} (Tables 2-5): one run, no measure of its noise. Run {again}")
    lines.append("")

    charts = {}
    for dataset in sorted({r["dataset"] for r in ablation_rows}) or [TABLE6_DATASET]:
        chart = out.with_name(f"{out.stem}-ablation-{dataset}.png") if ablation_rows else None
        section, miss = ablation_section(ablation_rows, dataset, chart)
        lines += section
        missing += miss
        if chart is not None:
            charts[dataset] = str(chart)

    lines += ["## Missing runs", ""] + ([f"- {m}" for m in missing] or ["None: every row has finished runs."])
    write_text(out, "\n".join(lines) + "\n")
    return {"out": str(out), "missing": missing, "charts": charts, "rows": len(rows)}
