"""The ``hsnet`` command line: one verb per pipeline step, each calling one function of the package.

DVC stages and Kubeflow components call these verbs (or the functions behind them)
and nothing else, so the step logic lives here once.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import HSNetError


def _model_info(args: argparse.Namespace) -> None:
    from .model.info import describe

    print(describe(args.num_classes, args.input_sizes))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsnet", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("model-info", help="parameters and forward GFLOPs of HSNet and its ablations")
    p.add_argument("--num-classes", type=int, default=7)
    p.add_argument("--input-sizes", type=int, nargs="+", default=[100, 224])
    p.set_defaults(func=_model_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = args.func(args)
    except HSNetError as exc:
        print(f"hsnet {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # python -m hsnet.cli
    sys.exit(main())
