"""Command line: ``python -m lightning_embproj compare <log dir> --output <dir>`` (or ``embproj``).

Example:
    $ embproj compare lightning_logs/version_0 --output report --epochs 0 5 9 --reducer tsne
    report/embeddings/view.html
    report/embeddings/compare_tsne.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="embproj", description="Tools for the local files of lightning-embproj.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    cmp = commands.add_parser(
        "compare", help="slider view and a side-by-side PNG of chosen epochs of a finished run",
        description="Read a run's local projections (<log dir>/embproj/<NAME>/epoch_*.csv) and "
                    "write <output>/<NAME>/view.html and <output>/<NAME>/compare_<reducer>.png.")
    cmp.add_argument("log_dir", type=Path, help="the run's log dir, e.g. lightning_logs/version_0")
    cmp.add_argument("--output", "-o", type=Path, required=True, help="folder for the results")
    cmp.add_argument("--name", help="only this embedding set (default: all)")
    cmp.add_argument("--epochs", type=int, nargs="+", metavar="EPOCH",
                     help="epochs of the PNG (default: first, middle, last)")
    cmp.add_argument("--reducer", help="layout of the PNG: pca, tsne, umap (default: first found)")
    cmp.add_argument("--max-epochs", type=int, default=50,
                     help="most frames of the slider view (default: 50)")
    return parser, cmp


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 on bad arguments)."""
    parser, cmp = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from lightning_embproj.compare import compare

    if not args.log_dir.is_dir():
        cmp.error(f"log dir {str(args.log_dir)!r} does not exist")
    if args.max_epochs < 2:
        cmp.error(f"--max-epochs: expected an int >= 2, got {args.max_epochs}")
    try:
        paths = compare(args.log_dir, args.output, name=args.name, epochs=args.epochs,
                        reducer=args.reducer, max_epochs=args.max_epochs)
    except (ValueError, FileNotFoundError, ImportError) as err:
        cmp.error(str(err).removeprefix("compare: "))
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
