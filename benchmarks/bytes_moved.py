"""Bytes moved per step of a pipeline run: what each DVC stage read (its data inputs) and wrote
(its outputs), from the sizes DVC recorded in ``dvc.lock``, plus the tensor cache that ``train``
decodes its crops into once (outside DVC: ``HSNET_CACHE_DIR``).

A stage's inputs are counted whole (a stage reads all of them: the raw photos for import,
validate and crop; the crops for train and evaluate); the code it depends on is listed apart.

    python -m benchmarks.bytes_moved [--repo .] [--smoke]
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .common import parser, save

CODE_SUFFIXES = (".py", ".yaml", ".yml", ".sh")


def _uint8_cache_bytes(repo: Path, stage_outs: list[dict], params: dict) -> int | None:
    """The uint8 tensor cache train fills from a crops folder: images x 3 x S x S bytes."""
    for out in stage_outs:
        manifest = repo / out["path"] / "manifest.csv"
        if manifest.is_file():
            rows = sum(1 for _ in manifest.open(encoding="utf-8")) - 1
            size = params.get("input_size")
            return rows * 3 * size * size if size else None
    return None


def moved(repo: Path) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    steps, total_read, total_written = [], 0, 0
    crops_by_dataset: dict[str, list[dict]] = {}
    for name, stage in lock["stages"].items():
        deps = stage.get("deps", [])
        data = [d for d in deps if not d["path"].endswith(CODE_SUFFIXES)]
        code = [d for d in deps if d["path"].endswith(CODE_SUFFIXES)]
        outs = stage.get("outs", [])
        row = {"step": name, "read_bytes": sum(d.get("size", 0) for d in data),
               "read_files": sum(d.get("nfiles", 1) for d in data),
               "written_bytes": sum(o.get("size", 0) for o in outs), "written_files": sum(o.get("nfiles", 1) for o in outs),
               "inputs": {d["path"]: d.get("size", 0) for d in data}, "outputs": {o["path"]: o.get("size", 0) for o in outs},
               "code_bytes": sum(d.get("size", 0) for d in code)}
        if name.startswith("crop@"):
            crops_by_dataset[name.split("@", 1)[1]] = outs
        if name.startswith("train@"):
            dataset = name.split("@", 1)[1]
            params = _dataset_params(repo, dataset)
            cache = _uint8_cache_bytes(repo, crops_by_dataset.get(dataset, []), params)
            if cache is not None:
                row["tensor_cache_written_bytes"] = cache  # decoded once, then read each epoch (memory-mapped)
                epochs = params.get("train", {}).get("epochs")
                if epochs:
                    row["tensor_cache_read_bytes_all_epochs"] = cache * epochs
        steps.append(row)
        total_read += row["read_bytes"]
        total_written += row["written_bytes"]
    return {"steps": steps, "read_bytes": total_read, "written_bytes": total_written}


def _dataset_params(repo: Path, dataset: str) -> dict:
    try:
        from hsnet.params import Params

        p = Params.resolve(repo / "params.yaml", dataset).to_dict()
        return p
    except Exception:  # a params file of another version: the sizes alone
        return {}


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--repo", default=".", help="the repository whose dvc.lock to read")
    args = p.parse_args(argv)
    repo = Path(args.repo)
    result = moved(repo)
    for s in result["steps"]:
        extra = f", tensor cache {_mb(s['tensor_cache_written_bytes'])}" if "tensor_cache_written_bytes" in s else ""
        print(f"{s['step']:22s} read {_mb(s['read_bytes']):>12s} ({s['read_files']} files)  "
              f"wrote {_mb(s['written_bytes']):>12s} ({s['written_files']} files){extra}")
    print(f"{'all steps':22s} read {_mb(result['read_bytes']):>12s}  wrote {_mb(result['written_bytes']):>12s}")
    save("bytes_moved" + ("-smoke" if args.smoke else ""), result, args.out)
    return result


if __name__ == "__main__":
    main()
