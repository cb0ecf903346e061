"""What each step's process pays before its work, and the three cuts of session 30, each against
what it replaced, alternated in one run (ratios: the machine is shared):

1. ``hsnet.sources.library_versions`` (the library versions the crop, tensor and validation
   caches are keyed by) against the same answer through ``importlib.metadata.packages_distributions``;
2. ``hsnet crop --detector none`` in a new process, against the same process made to load torch
   first (it did, only to read ``--device``);
3. a new, empty MLflow sqlite store made by MLflow (its schema migrations) against a copy of one
   (how tests/mlflow_store.py gives each test its store).

    python -m benchmarks.step_overheads [--smoke]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from .common import parser, save

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("PIL", "numpy", "torch", "facenet_pytorch")


def _through_packages_distributions(modules: tuple[str, ...]) -> dict[str, str]:
    """The answer as hsnet read it before: every distribution's files, through the standard call."""
    providers = metadata.packages_distributions()
    return {name: metadata.version(name) for m in modules for name in sorted(set(providers.get(m, ())))}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _alternate(a, b, repeat: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, taken in turn (a, b, a, b ...)."""
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(_timed(a))
        tb.append(_timed(b))
    return statistics.median(ta), statistics.median(tb)


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    repeat = 1 if args.smoke else 5
    rows = []
    from hsnet import sources

    assert {k.lower(): v for k, v in _through_packages_distributions(LIBRARIES).items()} == \
        {k.lower(): v for k, v in sources.library_versions(LIBRARIES).items()}, "the same answer"
    before, after = _alternate(lambda: _through_packages_distributions(LIBRARIES),
                               lambda: sources.library_versions(LIBRARIES), repeat)
    rows.append({"what": "library versions of PIL, numpy, torch, facenet_pytorch", "before_s": before,
                 "after_s": after, "ratio": after / before})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from hsnet.data.datasets import import_dataset
        from hsnet.data.sample import generate

        generate(tmp / "raw", per_class=1, size=48, seed=0)
        import_dataset("sample", tmp / "raw", tmp / "manifest.csv")
        crop = ["crop", "--manifest", str(tmp / "manifest.csv"), "--root", str(tmp / "raw"), "--detector", "none",
                "--no-face", "center", "--size", "48"]
        runs = iter(range(10**6))

        def process(preload: str):
            code = f"import sys{preload}; from hsnet.cli import main; sys.exit(main(sys.argv[1:]))"
            done = subprocess.run([sys.executable, "-c", code, *crop, "--out", str(tmp / f"out{next(runs)}")],
                                  cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        before, after = _alternate(lambda: process(", torch"), lambda: process(""), repeat)
        rows.append({"what": "hsnet crop --detector none, 42 photos, one process", "before_s": before,
                     "after_s": after, "ratio": after / before})

        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        stores = iter(range(10**6))

        def new_store():
            n = next(stores)
            SqlAlchemyStore(f"sqlite:///{tmp / f's{n}.db'}", (tmp / f"a{n}").as_uri()).engine.dispose()
        new_store()  # the one copied
        before, after = _alternate(new_store, lambda: shutil.copyfile(tmp / "s0.db", tmp / f"c{next(stores)}.db"),
                                   repeat)
        rows.append({"what": "a new, empty MLflow sqlite store", "before_s": before, "after_s": after,
                     "ratio": after / before})

    result = {"repeat": repeat, "rows": rows}
    save("step_overheads-smoke" if args.smoke else "step_overheads", result, args.out)
    for r in rows:
        print(f"{r['what']}: {r['before_s']:.3f} s -> {r['after_s']:.3f} s ({r['ratio']:.2f}x)")
    return result


if __name__ == "__main__":
    main()
