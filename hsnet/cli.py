"""The ``hsnet`` command line: one verb per pipeline step, each calling one function of the package.

A verb parses its flags, resolves the typed settings (:class:`hsnet.params.Params`), calls the
step's function and prints a summary. DVC stages call these verbs; the Kubeflow components call
the same functions directly (components/).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from . import interrupt, logs
from .errors import HSNetError
from .files import BEST, CONFUSION, CROP_REPORT, HISTORY, LAST, MANIFEST, METRICS_FILE, PREDICTIONS


def _model_info(args: argparse.Namespace) -> None:
    from .model.info import describe

    print(f"counting the parameters and FLOPs of 8 configurations at {', '.join(map(str, args.input_sizes))} px "
          "(about a minute on 2 CPU cores)", file=sys.stderr)
    print(describe(args.num_classes, args.input_sizes))


def _params(args: argparse.Namespace, section: str, given: dict):
    """The dataset's settings: the paper's defaults <- --params file <- flags given (not None)."""
    from .params import Params, flags

    return Params.resolve(args.params, args.dataset or "", flags(section, given), overrides_name="command line")


def _data_import(args: argparse.Namespace) -> None:
    from .data.datasets import import_dataset

    p = _params(args, "import", {"seed": args.seed, "split_by": args.split_by, "rafdb_images": args.rafdb_images})
    summary = import_dataset(args.dataset, args.root, args.out, p.import_)
    print(f"{summary['images']} images of {args.dataset} -> {args.out} "
          f"(train {summary['splits']['train']}, val {summary['splits']['val']}, "
          f"test {summary['splits']['test']}; skipped {summary['skipped']} stray file(s), "
          f"{summary['missing']} listed but missing"
          + (f", {summary['duplicates']} left out as duplicates" if summary["duplicates"] else "")
          + (f", {summary['outside_root']} linked from outside the root left out" if summary["outside_root"] else "")
          + (f", {summary['formula_like']} named like a spreadsheet formula left out" if summary["formula_like"] else "")
          + (f", {len(summary['inferred'])} misnamed taken by their folders" if summary["inferred"] else "") + ")")


def _data_sample(args: argparse.Namespace) -> None:
    from .data.sample import generate

    n = generate(args.out, per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"{n} sample images -> {args.out}")


def _data_fetch(args: argparse.Namespace) -> None:
    from .data.fetch import fetch

    r = fetch(args.source, args.out, dvc_path=args.dvc_path, rev=args.rev)
    print(f"{r['files']} file(s) from {r['source']} -> {r['out']}")


def _validate(args: argparse.Namespace) -> None:
    from .data.validate import validate

    p = _params(args, "validate", {"min_size": args.min_size, "max_bad_fraction": args.max_bad_fraction})
    summary = validate(args.manifest, args.root, args.dataset, args.report, p.validate,
                       workers=args.workers, use_cache=not args.no_cache)
    left = f", {summary['left_out']} that don't decode left out" if summary.get("left_out") else ""
    print(f"{summary['images']} images of {args.dataset} passed validation{left} "
          f"({len(summary['warnings'])} warning(s)); report: {summary['data_docs']}")


def _crop(args: argparse.Namespace) -> None:
    from .data.crop import crop

    if args.params and not args.dataset:
        raise HSNetError("--params needs --dataset (whose 'crop' settings to use)")
    p = _params(args, "crop", {"detector": args.detector, "size": args.size, "margin": args.margin,
                               "no_face": args.no_face, "min_prob": args.min_prob})
    # dvc repro's stage gives no --device: HSNET_DEVICE decides (in the detector: no torch without one)
    report = crop(args.manifest, args.root, args.out, device=args.device, settings=p.crop,
                  batch_size=args.batch_size)
    print(f"{report['output_images']} of {report['images']} images cropped -> {args.out} "
          f"({report['reused']} unchanged, {len(report['no_face'])} without a face, "
          f"{len(report['multi_face'])} with several, {len(report['unreadable'])} unreadable, "
          f"{len(report['refused'])} refused; "
          f"see {args.out}/{CROP_REPORT})")


def _train(args: argparse.Namespace) -> None:
    from .params import Params, deep_merge, flags, parse_set
    from .train import train

    overrides = deep_merge(parse_set(args.set or []), flags("train", {"max_epochs": args.max_epochs}))
    params = Params.resolve(args.params, args.dataset, overrides)
    if args.checkpoint_uri:  # copies the checkpoints to S3 (at most every --checkpoint-every s), resumes from there
        from . import durable

        if args.checkpoint_every is not None and not 0 <= args.checkpoint_every < float("inf"):
            raise HSNetError(f"--checkpoint-every {args.checkpoint_every}: give seconds, 0 or more (0: every epoch)")
        summary = durable.train(args.data, params, args.out, args.checkpoint_uri, device=args.device,
                                track=not args.no_mlflow, min_interval_s=args.checkpoint_every)
    else:
        summary = train(args.data, params, args.out, resume={"auto": "auto", "yes": True}.get(args.resume, False),
                        device=args.device, track=not args.no_mlflow)
    print(f"trained {summary['epochs_run']} epoch(s); best val accuracy {summary['best_val_accuracy']:.4f} "
          f"at epoch {summary['best_epoch']} -> {os.path.join(args.out, summary['checkpoint'])}")


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate

    settings = None  # the settings the model was trained with
    if args.params or args.tta_hflip is not None:
        if args.params and not args.dataset:
            raise HSNetError("--params needs --dataset (whose 'evaluate' settings to use)")
        settings = _params(args, "evaluate", {"tta_hflip": args.tta_hflip}).evaluate
    m = evaluate(args.checkpoint, args.data, args.out, split=args.split, device=args.device, settings=settings,
                 track=not args.no_mlflow)
    print(f"{m['dataset']} {m['split']}: accuracy {m['accuracy']:.4f}, mean accuracy {m['mean_accuracy']:.4f} "
          f"({m['images']} images) -> {args.out}/{METRICS_FILE}, {CONFUSION}")


def _register(args: argparse.Namespace) -> None:
    from .io import output_file, write_json
    from .registry import REGISTER_EXPERIMENTS_ENV, experiment_not_registered, held, record, register

    if args.out:
        output_file(args.out, "--out")  # before the registry is touched
    skipped = experiment_not_registered() if args.skip_in_experiments else None
    if skipped:
        if args.out:
            write_json(args.out, skipped)
        print(f"not registered: DVC experiment {skipped['experiment']} (registry aliases move only for runs of "
              f"the workspace; set {REGISTER_EXPERIMENTS_ENV}=1 to register experiments)")
        return
    r = register(args.checkpoint, args.metrics, args.dataset, name=args.name)
    if args.out:
        write_json(args.out, record(r))
    state = "already registered as" if r["already_registered"] else "registered"
    print(f"{state} {r['name']} version {r['version']} ({held(r['aliases'])}; test accuracy "
          f"{r['test_accuracy']:.4f}): {r['model_uri']}")


def _promote(args: argparse.Namespace) -> None:
    from .registry import LOCK_SUFFIX, promote, rollback, unlock

    if args.history:
        from .registry import promotion_history

        others = [flag for flag, on in (("--version", args.version is not None), ("--force", args.force),
                                        ("--rollback", args.rollback), ("--unlock", args.unlock),
                                        ("--deploy", args.deploy), ("--dry-run", args.dry_run),
                                        ("--isvc", args.isvc is not None), ("--namespace", args.namespace is not None))
                  if on]
        if others:
            raise HSNetError(f"--history only lists; it doesn't go with {', '.join(others)} (run those without it)")

        print("time                  action    outcome    production  previous  by")
        for r in promotion_history(args.name):
            print(logs.printable(f"{r['time']:21} {r['action']:9} {r['outcome']:10} {r['production'] or '-'!s:11} "
                                 f"{r['previous'] or '-'!s:9} {r['kfp_run_id'] or r['user'] or '-'}"
                                 f"{'  FORCED' if r['forced'] else ''}  {' '.join(r['reason'].split())[:200]}"))
        return
    if args.dry_run:
        if not args.deploy:
            raise HSNetError("--dry-run goes with --deploy")
        from .deploy import dry_run

        print(dry_run(args.name, version=args.version, rollback=args.rollback, isvc=args.isvc,
                      namespace=args.namespace, canary_percent=args.canary_percent), end="")
        return
    if args.unlock:
        print(f"{args.name}: promotion lock {args.name}{LOCK_SUFFIX} "
              + ("removed" if unlock(args.name) else "was not held"))
        return
    if args.rollback:
        deployed = None
        if args.deploy:  # the traffic first: see deploy.rollback_production
            from .deploy import rollback_production

            r, deployed = rollback_production(args.name, isvc=args.isvc, namespace=args.namespace)
        else:
            r = rollback(args.name)
        print(f"{args.name}: production rolled back to version {r['production']} "
              + (f"(version {r['previous']} is now 'previous')" if r["previous"] is not None else
                 "(production's version was deleted: no version is 'previous' now)"))
        if deployed is not None:
            from .deploy import describe

            print(describe(deployed))
        return
    deployed = None
    if args.deploy:
        from .deploy import promote_and_deploy

        r, deployed = promote_and_deploy(args.name, version=args.version, metric=args.metric,
                                         min_delta=args.min_delta, force=args.force, isvc=args.isvc,
                                         namespace=args.namespace, canary_percent=args.canary_percent)
    else:
        r = promote(args.name, version=args.version, metric=args.metric, min_delta=args.min_delta, force=args.force)
    reason = logs.printable(str(r["reason"]))  # it may name files and versions' tags
    if r["promoted"]:
        print(f"{args.name}: production -> version {r['production']}"
              f"{' (FORCED)' if r['forced'] else ''}; {reason}"
              + (f"; previous -> version {r['previous']}" if r["previous"] else ""))
    else:
        print(f"{args.name}: nothing to do, {reason}")
    if deployed is not None:
        from .deploy import describe

        print(describe(deployed))


def _serve(args: argparse.Namespace) -> int:
    from .deploy import serve_command

    return serve_command(args)


def _predict(args: argparse.Namespace) -> int:
    from .predict import predict

    s = predict(args.inputs, args.model, out=args.out, annotate_dir=args.annotate, device=args.device,
                min_prob=args.min_prob, min_face_size=args.min_face_size)
    if not args.out:
        import json

        for record in s["results"]:
            print(json.dumps(record))
    for record in s["results"]:
        faces = ", ".join(f"{f['expression']} ({f['confidence']:.0%})" for f in record["faces"])
        print(logs.printable(f"{record['path']}: {faces or record.get('error') or 'no face found'}"), file=sys.stderr)
    print(f"{s['photos']} photo(s), {s['faces']} face(s); {len(s['no_face'])} without a face, "
          f"{len(s['unreadable'])} unreadable"
          + (f"; {len(s['not_annotated'])} annotation(s) not written" if s["not_annotated"] else "")
          + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    return 0 if len(s["unreadable"]) < s["photos"] else 1


def _print_failures(failed: dict[str, str]) -> None:
    from .reproduce import why_failed

    for name, output in failed.items():
        lines = [logs.printable(line) for line in why_failed(output) or ["(no output)"]]  # a child's output, raw
        print(f"  {name}: {lines[-1]}" + "".join(f"\n    because: {line}" for line in lines[:-1]))


def _reproduce(args: argparse.Namespace) -> int:
    from . import reproduce

    if args.table == "ablation":
        r = reproduce.ablation(args.dataset, params_path=args.params, stem_weights=args.stem_weights,
                               queue=args.queue, jobs=args.jobs, seeds=args.seeds, concurrent=args.concurrent,
                               configs=reproduce.parse_configs(args.configs))
        print(f"ablation on {args.dataset}: {len(r['ran'])} ran, {len(r['queued'])} queued "
              f"(start them: dvc queue start -j N), {len(r['skipped'])} skipped, {len(r['failed'])} failed")
        for name, why in r["skipped"].items():
            print(f"  {name}: {logs.printable(why)}")
        _print_failures(r["failed"])
        print("then: hsnet reproduce report --out docs/results.md")
        return 1 if r["failed"] else 0
    if args.table == "datasets":
        r = reproduce.datasets([d.strip() for d in args.datasets.split(",") if d.strip()], params_path=args.params,
                               queue=args.queue, seeds=args.seeds)
        print(f"{len(r['ran'])} ran, {len(r['queued'])} queued, {len(r['missing'])} missing, "
              f"{len(r['failed'])} failed")
        for name, why in r["missing"].items():
            print(f"  {name}: {logs.printable(why)}")
        _print_failures(r["failed"])
        return 1 if r["failed"] or r["missing"] else 0  # a dataset asked for and not run is not a success
    r = reproduce.report(args.out)
    print(f"{r['out']}: {r['rows']} result(s); {len(r['missing'])} missing" +
          "".join(f"\n  missing: {m}" for m in r["missing"]))
    return 0


class _Help(argparse.HelpFormatter):
    """Shows each option's default where it has one (not for flags and unset options)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or default is False or default is argparse.SUPPRESS \
                or action.option_strings == []:  # (is: a default of 0 or 0.0 is shown)
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def _verb(group, name: str, help: str, func=None) -> argparse.ArgumentParser:
    """A verb with its one-line ``help`` as its description too; ``func`` runs it."""
    p = group.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", formatter_class=_Help)
    if func:
        p.set_defaults(func=func)
    return p


def _dataset_help(extra: str = "") -> str:
    from .data.datasets import DATASETS

    return f"one of {', '.join(DATASETS)}{extra}"


def _add_data_verbs(verbs) -> None:
    from .data import sample
    from .params import ImportParams, allowed

    data = _verb(verbs, "data", "raw datasets: import into a manifest, draw the sample, fetch")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="VERB")
    p = _verb(data_verbs, "import", "read a dataset in its publisher's layout, write a manifest with splits",
              _data_import)
    p.add_argument("--dataset", required=True, help=_dataset_help())
    p.add_argument("--root", required=True, help="the dataset's folder, as its publisher ships it")
    p.add_argument("--out", required=True, help="the manifest CSV to write")
    p.add_argument("--params", default=None, help="params.yaml: its datasets.NAME.import settings")
    p.add_argument("--seed", type=int, default=None, help="split seed (params' import.seed, else 0)")
    p.add_argument("--split-by", choices=allowed(ImportParams, "split_by"), default=None,
                   help="stratify by class (the default), or keep subjects disjoint across splits")
    p.add_argument("--rafdb-images", choices=allowed(ImportParams, "rafdb_images"), default=None,
                   help="RAF-DB's aligned faces (the default) or its original photos")
    p = _verb(data_verbs, "sample", "draw the built-in synthetic sample dataset (FERG-DB layout)", _data_sample)
    p.add_argument("--out", default="data/raw/sample", help="folder for the generated dataset")
    # the defaults draw the sample data.dvc records (make pipeline: byte-identical)
    p.add_argument("--per-class", type=int, default=sample.PER_CLASS, help="images per character and expression")
    p.add_argument("--size", type=int, default=sample.SIZE, help="image side in pixels")
    p.add_argument("--seed", type=int, default=sample.SEED)
    p = _verb(data_verbs, "fetch", "copy a raw dataset from S3, a DVC repository or a folder", _data_fetch)
    p.add_argument("--source", required=True,
                   help="s3://BUCKET/PREFIX, a local folder, or a DVC repository URL (with --dvc-path)")
    p.add_argument("--out", required=True, help="an empty or new folder")
    p.add_argument("--dvc-path", default=None, help="the path in the DVC repository, e.g. data/raw/rafdb")
    p.add_argument("--rev", default=None, help="git revision of the DVC repository")


def _add_data_steps(verbs) -> None:
    from .data import crop as crop_module
    from .params import CropParams, Params, ValidateParams, allowed  # the defaults the help names

    p = _verb(verbs, "validate", "check a manifest and its images with Great Expectations", _validate)
    p.add_argument("--manifest", required=True, help="the manifest CSV of 'hsnet data import'")
    p.add_argument("--root", required=True, help="the folder the manifest's paths are relative to")
    p.add_argument("--dataset", required=True, help=_dataset_help())
    p.add_argument("--report", required=True, help="folder for the GX results (JSON) and Data Docs (HTML)")
    p.add_argument("--params", default=None, help="params.yaml: its datasets.NAME.validate settings")
    p.add_argument("--min-size", type=int, default=None, help=f"smallest acceptable image side in px (else params', {ValidateParams.min_size})")
    p.add_argument("--max-bad-fraction", type=float, default=None,
                   help="share of images that may not decode and still pass, each named in the report and left "
                   f"out by crop (else params', {ValidateParams.max_bad_fraction:g})")
    p.add_argument("--workers", type=int, default=None, help="parallel image checks (default: 2 x cores, at most 32)")
    p.add_argument("--no-cache", action="store_true", help="re-inspect every image")

    p = _verb(verbs, "crop", "detect and crop faces with MTCNN (or just resize)", _crop)
    p.add_argument("--manifest", required=True, help="the manifest CSV of 'hsnet data import'")
    p.add_argument("--root", required=True, help="the folder the manifest's paths are relative to")
    p.add_argument("--out", required=True, help="folder for the crops, their manifest and the report")
    p.add_argument("--params", default=None, help="params.yaml: its datasets.NAME.crop settings (with --dataset)")
    p.add_argument("--dataset", default=None, help=_dataset_help(" (whose settings --params gives)"))
    p.add_argument("--detector", choices=allowed(CropParams, "detector"), default=None, help=f"else params', else {CropParams.detector}")
    p.add_argument("--size", type=int, default=None,
                   help=f"output side in pixels (else params' crop.size, else the input size, {Params.input_size})")
    p.add_argument("--margin", type=int, default=None, help=f"margin around the face, in output pixels (else {CropParams.margin})")
    p.add_argument("--no-face", choices=allowed(CropParams, "no_face"), default=None,
                   help="images without a face: drop them (the default; listed in the report) or centre-crop")
    p.add_argument("--min-prob", type=float, default=None, help=f"ignore detections below this probability (else {CropParams.min_prob:g})")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: HSNET_DEVICE, else cpu)")
    p.add_argument("--batch-size", type=int, default=crop_module.BATCH_SIZE, help="photos per MTCNN batch")


def _add_train_evaluate(verbs) -> None:
    from .data.manifest import SPLITS, TEST
    from .params import PARAMS_FILE

    p = _verb(verbs, "train", "train HSNet on a cropped dataset with the paper's recipe", _train)
    p.add_argument("--data", required=True, help=f"output folder of 'hsnet crop' (with {MANIFEST})")
    p.add_argument("--params", default=PARAMS_FILE, help="the settings file (its datasets.NAME entry)")
    p.add_argument("--dataset", required=True, help=_dataset_help())
    p.add_argument("--out", required=True, help=f"folder for {LAST}, {BEST}, {HISTORY}")
    p.add_argument("--resume", nargs="?", const="yes", choices=["yes", "auto"], default=None,
                   help=f"continue from OUT/{LAST} if it exists; 'auto': only if it is of the same data, code and "
                   "settings (but how fast: compile, data_on_device, data_memory_share, num_threads), from the "
                   "start otherwise "
                   "(what dvc.yaml uses)")
    p.add_argument("--checkpoint-uri", default=None, metavar="S3_PREFIX",
                   help=f"also keep {LAST}/{BEST} at this s3:// prefix, uploaded after the first epoch and then "
                   "every --checkpoint-every seconds at most, and resume from there when OUT has none (a preempted "
                   "machine); implies --resume auto")
    p.add_argument("--checkpoint-every", type=float, default=None, metavar="SECONDS",
                   help="with --checkpoint-uri: the least time between uploads (default: hsnet.durable.INTERVAL_S; 0: every epoch)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--max-epochs", type=int, default=None, help="cap the epochs for a quick run")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting of the dataset, e.g. model.dib=false (YAML value; repeatable)")
    p.add_argument("--no-mlflow", action="store_true", help="don't record an MLflow run")

    p = _verb(verbs, "evaluate", "test accuracy, mean accuracy, confusion matrix, comparison with the paper",
              _evaluate)
    p.add_argument("--checkpoint", required=True, help=f"{BEST} of 'hsnet train'")
    p.add_argument("--data", required=True, help="output folder of 'hsnet crop'")
    p.add_argument("--out", required=True, help=f"folder for {METRICS_FILE}, {PREDICTIONS}, the plots")
    p.add_argument("--split", default=TEST, choices=SPLITS, help="the manifest's split to evaluate on")
    p.add_argument("--params", default=None,
                   help="params.yaml: its datasets.NAME.evaluate settings (default: those the model was trained with)")
    p.add_argument("--dataset", default=None, help="with --params: whose settings")
    p.add_argument("--tta-hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the flipped image, or not (else the checkpoint's evaluate.tta_hflip; "
                        "off in the paper)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--no-mlflow", action="store_true", help="don't record an MLflow run")


def _add_reproduce(verbs) -> None:
    from .paper import DATASETS
    from .params import PARAMS_FILE
    from .reproduce import DEFAULT_SEEDS

    p = _verb(verbs, "reproduce", "the paper's tables as DVC experiments, and a report of them")
    rverbs = p.add_subparsers(dest="table", required=True, metavar="WHAT")
    r = _verb(rverbs, "ablation", "Table 6: the 8 DIB/FGAL/KTL configurations on one dataset", _reproduce)
    r.add_argument("--dataset", required=True, help=_dataset_help())
    r.add_argument("--params", default=PARAMS_FILE)
    r.add_argument("--stem-weights", default=None, help="KTL weights file or s3:// URI (default: params')")
    r.add_argument("--queue", action="store_true", help="queue the experiments (dvc queue) instead of running")
    r.add_argument("--jobs", type=int, default=None, help="with --queue: run the queue now with N workers")
    r.add_argument("--seeds", type=int, default=None, metavar="K",
                   help=f"runs per configuration, train.seed = 0..K-1 (default {DEFAULT_SEEDS})")
    r.add_argument("--concurrent", type=int, default=None, metavar="N",
                   help="train N runs at a time, sharing the GPU or, with several, each on the least busy "
                        "(default 1: one after another)")
    r.add_argument("--configs", default=None, metavar="NAMES",
                   help="only these rows, comma-separated, e.g. dib1-fgal0-ktl0,dib0-fgal0-ktl0 "
                        "(default: all 8; dibD-fgalF-ktlK, 1 = on)")
    r = _verb(rverbs, "datasets", "Tables 2-5: the paper's setting on each dataset", _reproduce)
    r.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    r.add_argument("--params", default=PARAMS_FILE)
    r.add_argument("--queue", action="store_true", help="queue the experiments (dvc queue) instead of running")
    r.add_argument("--seeds", type=int, default=None, metavar="K",
                   help=f"runs per dataset, train.seed = 0..K-1 (default {DEFAULT_SEEDS})")
    r = _verb(rverbs, "report", "the finished experiments in the paper's table layouts", _reproduce)
    r.add_argument("--out", default="docs/results.md", help="the report to write")


def _add_registry(verbs) -> None:
    from .deploy import CANARY_PERCENT
    from .registry import GATE_METRIC, METRICS, MIN_DELTA

    p = _verb(verbs, "register", "register an evaluated checkpoint in the MLflow model registry", _register)
    p.add_argument("--checkpoint", required=True, help=f"{BEST} of 'hsnet train'")
    p.add_argument("--metrics", required=True, help=f"{METRICS_FILE} of 'hsnet evaluate' for this checkpoint")
    p.add_argument("--dataset", required=True, help=_dataset_help())
    p.add_argument("--name", default=None, help="registered model name (default hsnet-DATASET)")
    p.add_argument("--out", default=None, help="write the registered name, version and URI here (JSON)")
    p.add_argument("--skip-in-experiments", action="store_true",
                   help="do nothing inside `dvc exp run` (DVC_EXP_NAME set) unless HSNET_REGISTER_EXPERIMENTS=1: "
                   "experiments don't move the candidate alias (dvc.yaml's register stage)")

    p = _verb(verbs, "promote", "move the 'production' alias to a better version, or roll back", _promote)
    p.add_argument("--name", required=True, help="registered model, e.g. hsnet-rafdb")
    p.add_argument("--version", default=None, help="version to promote (default: the 'candidate' alias)")
    p.add_argument("--metric", choices=list(METRICS), default=GATE_METRIC, help="the test metric compared")
    p.add_argument("--min-delta", type=float, default=MIN_DELTA, help="required gain over production")
    p.add_argument("--force", action="store_true", help="promote even if not better / tested on other data")
    p.add_argument("--rollback", action="store_true", help="put the 'previous' version back in production")
    p.add_argument("--history", action="store_true",
                   help="list the promotions and rollbacks of --name, refused ones too (newest first)")
    p.add_argument("--unlock", action="store_true",
                   help="remove the promotion lock a killed promotion left (only when none is running)")
    p.add_argument("--deploy", action="store_true", help="then roll the KServe InferenceService to production "
                   "with a canary share (--rollback: return its traffic); KUBECONFIG or the pod's account")
    p.add_argument("--dry-run", action="store_true", help="with --deploy: print the manifest, apply nothing")
    p.add_argument("--canary-percent", type=int, default=CANARY_PERCENT, help="with --deploy: the new version's traffic share "
                   "(100: all; run again with 100 to finish a canary)")
    p.add_argument("--isvc", default=None, help="with --deploy: the InferenceService (default: the model's name)")
    p.add_argument("--namespace", default=None, help="with --deploy: its namespace (default: the context's)")


def _add_inference(verbs) -> None:
    from .limits import (ENV_PREFIX, GRACE_PERIOD_S, HOST, MIN_FACE_SIZE, MIN_PROB, MODEL_NAME, PENDING_AT_THE_LIMIT,
                         PORT, Limits)
    from .params import MTCNN_MIN_FACE_SIZE

    p = _verb(verbs, "predict", "find the faces in photos and classify their expressions", _predict)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--model", required=True, help="a checkpoint, or models:/hsnet-NAME@production")
    p.add_argument("--out", default=None, help="JSON lines file (default: print to stdout)")
    p.add_argument("--annotate", default=None, metavar="DIR", help="save copies with boxes and labels here")
    p.add_argument("--min-prob", type=float, default=MIN_PROB, help="face detection probability threshold")
    p.add_argument("--min-face-size", type=int, default=MIN_FACE_SIZE,
                   help=f"smallest face searched for, in pixels (MTCNN's own default is {MTCNN_MIN_FACE_SIZE})")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")

    p = _verb(verbs, "serve", "the model server (KServe V1/V2): photos in, faces and expressions out", _serve)
    p.add_argument("--model", required=True, help="models:/hsnet-NAME@production, models:/hsnet-NAME/VERSION "
                   "or a checkpoint file")
    p.add_argument("--port", type=int, default=PORT, help="port to listen on")
    p.add_argument("--host", default=HOST, help="address to listen on (0.0.0.0 in a container)")
    p.add_argument("--name", default=MODEL_NAME, help="the model's name in the URLs (/v1/models/NAME:predict)")
    p.add_argument("--threads", type=int, default=None, help="requests served in parallel (default: CPU cores)")
    p.add_argument("--grace-period", type=float, default=GRACE_PERIOD_S, metavar="SECONDS",
                   help="after SIGTERM, how long requests in flight may still finish (keep it under the pod's "
                   "terminationGracePeriodSeconds)")
    p.add_argument("--min-prob", type=float, default=MIN_PROB, help="face detection probability threshold")
    p.add_argument("--min-face-size", type=int, default=MIN_FACE_SIZE, help="smallest face searched for, in pixels")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    for limit in Limits.names():
        default = (f"{PENDING_AT_THE_LIMIT} x --max-request-bytes" if limit == "max_pending_bytes" else
                   f"{getattr(Limits(), limit):,}")
        p.add_argument("--" + limit.replace("_", "-"), type=int, default=None,
                       help=f"limit (default: {ENV_PREFIX}{limit.upper()}, else {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsnet", description=__doc__.splitlines()[0].replace("``", ""),
                                     formatter_class=_Help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = _verb(verbs, "model-info", "parameters and forward GFLOPs of HSNet and its Table 6 ablations", _model_info)
    p.add_argument("--num-classes", type=int, default=None,
                   help="expressions the classifier tells apart (default: those of Table 6's dataset)")
    p.add_argument("--input-sizes", type=int, nargs="+", default=[100, 224], help="input sizes to count GFLOPs at")
    _add_data_verbs(verbs)
    _add_data_steps(verbs)
    _add_train_evaluate(verbs)
    _add_reproduce(verbs)
    _add_registry(verbs)
    _add_inference(verbs)
    return parser


# what to lower when a GPU runs out of memory (another job may hold it: nvidia-smi shows which)
OUT_OF_MEMORY = {
    "train": "set train.data_on_device false or train.compile false, or free the GPU, and carry on{resume}; or "
             "lower train.batch_size, which trains again from the start (another batch is another training)",
    "crop": "lower --batch-size, or crop on the CPU with --device cpu",
    None: "free the GPU (nvidia-smi shows what holds it), or run on the CPU with --device cpu",
}


def _resume_hint(args) -> str:
    """Where a stopped ``hsnet train`` goes on from: its ``last.pt``, when an epoch finished."""
    last = os.path.join(args.out, LAST)
    if os.path.isfile(last):
        return (f"; {last} holds the last finished epoch: add --resume to continue (dvc repro and make pipeline "
                "resume by themselves)")
    return "; no epoch finished, so the next run starts from the beginning"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.verbose)
    try:
        with interrupt.interruptible():  # a Ctrl-C is remembered even where Python swallows it
            result = args.func(args)
            sys.stdout.flush()  # a reader that has gone shows here, not as Python's "Exception ignored" at exit
    except HSNetError as exc:
        # its further lines indented: a file name's newline can't put a line of its own at the margin
        print(f"hsnet {args.verb}: error: {logs.indented(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `hsnet ... | head`: the reader stopped reading; any other broken pipe is an error
        if not logs.stdout_gone():
            raise
        return logs.reader_gone()
    except Exception as exc:
        from .tracking import schema_message

        torch, schema = sys.modules.get("torch"), schema_message(exc)
        if schema:  # a tracking store of another MLflow's schema: what to do, not MLflow's traceback
            print(f"hsnet {args.verb}: error: {schema}", file=sys.stderr)
            return 2
        if torch is None or not isinstance(exc, torch.OutOfMemoryError):
            raise
        print(f"hsnet {args.verb}: error: out of GPU memory ({str(exc).splitlines()[0][:300]}); "
              + (OUT_OF_MEMORY["train"].format(resume=_resume_hint(args)) if args.verb == "train" else
                 OUT_OF_MEMORY.get(args.verb, OUT_OF_MEMORY[None])), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGINT, SIGTERM: files are written atomically, so none is half-written
        hint = _resume_hint(args) if args.verb == "train" else ""
        terminated = isinstance(exc, interrupt.Terminated)
        print(f"hsnet {args.verb}: {'terminated (SIGTERM)' if terminated else 'interrupted'}, stopped before "
              f"finishing{hint}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)  # the shell's codes: 143, 130
    return int(result or 0)


if __name__ == "__main__":  # python -m hsnet.cli
    sys.exit(main())
