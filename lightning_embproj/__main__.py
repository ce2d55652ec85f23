"""Command line: ``python -m lightning_embproj compare RUN [RUN_B] --output DIR`` (or ``embproj``).

Example:
    $ embproj compare lightning_logs/version_0 --output report --epochs 0 5 9 --reducer tsne
    report/embeddings/view.html
    report/embeddings/compare_tsne.png
    $ embproj compare wandb_logs --output report --latest   # the newest run below a folder
    $ embproj compare runs/seed0 runs/seed1 --output report --epoch 7
    embeddings: 250 shared ids (250 tracked in A, 250 in B); mean neighbourhood overlap ...
      most changed (pca): 17 (label 3) 0.10, ...
    report/embeddings/compare.html
    report/embeddings/neighbours_pca.csv
    report/embeddings/neighbours_tsne.csv
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
        "compare", help="one run: the view and a PNG of chosen epochs; two runs: side by side",
        description="One run: read its local projections (<log dir>/embproj/<NAME>/) and write "
                    "<output>/<NAME>/view.html and <output>/<NAME>/compare_<reducer>.png. Two "
                    "runs: align B's layouts onto A's on their shared ids and write "
                    "<output>/<NAME>/compare.html (side by side, linked selection) and "
                    "<output>/<NAME>/neighbours_<reducer>.csv (the points whose layout "
                    "neighbourhoods differ most first).")
    cmp.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                     help="a log dir (e.g. lightning_logs/version_0), one set's folder, or a "
                          "folder above one run (a W&B save_dir); give two to compare two runs")
    cmp.add_argument("--latest", action="store_true",
                     help="a RUN folder holding several runs below it stands for the newest "
                          "(latest file written); without it, several runs are listed and "
                          "refused")
    cmp.add_argument("--output", "-o", type=Path, required=True, help="folder for the results")
    cmp.add_argument("--name", help="only this embedding set (default: all)")
    cmp.add_argument("--epochs", type=int, nargs="+", metavar="EPOCH",
                     help="one run: epochs of the PNG (default: first, middle, last)")
    cmp.add_argument("--epoch", type=int,
                     help="two runs: compare the last validation run of this epoch in both "
                          "(default: each run's last validation run)")
    cmp.add_argument("--reducer", help="layout: pca, tsne, umap (default: one run: the first "
                                       "found; two runs: every one both have)")
    cmp.add_argument("--max-runs", "--max-epochs", dest="max_runs", type=int, default=50,
                     help="one run: most validation runs on the view's slider (default: 50)")
    cmp.add_argument("--top", type=int, default=30,
                     help="two runs: rows of the most-changed table in the page (default: 30)")
    return parser, cmp


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 on bad arguments)."""
    parser, cmp = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from lightning_embproj.report.compare import compare
    from lightning_embproj.report.compare_two import compare_runs

    if len(args.runs) > 2:
        cmp.error(f"expected one run or two runs to compare, got {len(args.runs)}")
    for path in args.runs:
        if not path.is_dir():
            what = "log dir" if len(args.runs) == 1 else "run"
            cmp.error(f"{what} {str(path)!r} does not exist")
    if args.max_runs < 2:
        cmp.error(f"--max-runs: expected an int >= 2, got {args.max_runs}")
    if args.top < 1:
        cmp.error(f"--top: expected an int >= 1, got {args.top}")
    if len(args.runs) == 1 and args.epoch is not None:
        cmp.error("--epoch picks the run compared in two runs; for one run use --epochs")
    if len(args.runs) == 2 and args.epochs:
        cmp.error("--epochs is for one run's PNG; to compare two runs at an epoch use --epoch")

    def skipped(message: str) -> None:
        print(f"embproj: {message.removeprefix('compare: ')}", file=sys.stderr)

    try:
        if len(args.runs) == 1:
            paths = compare(args.runs[0], args.output, name=args.name, epochs=args.epochs,
                            reducer=args.reducer, max_runs=args.max_runs, on_skip=skipped,
                            latest=args.latest)
        else:
            # The summary on stderr: stdout lists only the paths written, for scripts.
            paths = compare_runs(args.runs[0], args.runs[1], args.output, name=args.name,
                                 epoch=args.epoch, reducer=args.reducer, top=args.top,
                                 latest=args.latest,
                                 summary=lambda text: print(text, file=sys.stderr))
    except (ValueError, FileNotFoundError, ImportError) as err:
        cmp.error(str(err).removeprefix("compare: "))
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
