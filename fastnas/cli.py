"""Command line: ``fastnas search`` and ``fastnas info``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fastnas.algorithms import METHODS
from fastnas.data import DATASET_NAMES
from fastnas.spaces import SPACE_NAMES
from fastnas.train.device import PRECISIONS


def _add_search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="run an architecture search",
        description="Run a differentiable architecture search. Hyper-parameters left unset take the "
        "method's published defaults (REFERENCE.md).",
    )
    p.add_argument("--method", default="darts", choices=sorted(METHODS))
    p.add_argument(
        "--order",
        type=int,
        choices=(1, 2),
        default=None,
        help="DARTS architecture gradient: 1 = first order (default), 2 = second order",
    )
    p.add_argument("--space", default="darts", choices=SPACE_NAMES)
    p.add_argument("--nodes", type=int, default=4, help="intermediate nodes per cell")
    p.add_argument("--dataset", default="cifar10", choices=DATASET_NAMES)
    p.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR python-batch folder, image-folder tree, or a .tar(.gz) of such a tree",
    )
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--C", "--init-channels", dest="C", type=int, default=None, help="initial channels")
    p.add_argument("--layers", type=int, default=None, help="number of cells")
    p.add_argument("--lr", type=float, default=None, help="weight learning rate")
    p.add_argument("--lr-min", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--arch-lr", type=float, default=None)
    p.add_argument("--arch-weight-decay", type=float, default=None)
    p.add_argument(
        "--train-portion",
        type=float,
        default=None,
        help="share of the training set that trains the weights (default 0.5)",
    )
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="autocast precision (GPU runs)")
    p.add_argument("--executor", default="reference", help="cell executor")
    p.add_argument("--nondeterministic", action="store_true", help="allow non-deterministic kernels")
    p.add_argument("--out-dir", default="runs", help="parent folder of run directories")
    p.add_argument("--run-name", default=None, help="run directory name (default: method-dataset-seed-time)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_info_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters and FLOPs of a supernet configuration")
    p.add_argument("--method", default="darts", choices=sorted(METHODS))
    p.add_argument("--space", default="darts", choices=SPACE_NAMES)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--C", "--init-channels", dest="C", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run_search(args: argparse.Namespace) -> int:
    from fastnas.train import SearchConfig, resume_search, run_search

    progress = not args.no_progress
    if args.resume:
        result = resume_search(
            args.resume, progress=progress, device=None if args.device == "auto" else args.device
        )
    else:
        options = {"order": args.order} if args.order is not None else {}
        config = SearchConfig(
            method=args.method,
            method_options=options,
            space=args.space,
            nodes=args.nodes,
            dataset=args.dataset,
            data_dir=args.data_dir,
            download=args.download,
            limit=args.limit,
            epochs=args.epochs,
            batch_size=args.batch_size,
            C=args.C,
            layers=args.layers,
            lr=args.lr,
            lr_min=args.lr_min,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            grad_clip=args.grad_clip,
            arch_lr=args.arch_lr,
            arch_weight_decay=args.arch_weight_decay,
            train_portion=args.train_portion,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
            executor=args.executor,
            deterministic=not args.nondeterministic,
            out_dir=args.out_dir,
            run_name=args.run_name,
        )
        try:
            result = run_search(config, progress=progress)
        except KeyboardInterrupt:
            print(
                "\ninterrupted: continue with `fastnas search --resume <run directory>` "
                "(the last completed epoch is checkpointed)",
                file=sys.stderr,
            )
            return 130
    print(f"\nrun directory: {result.run_dir}")
    print(f"genotype = {result.genotype.to_literal()}")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from fastnas.info import format_info, supernet_info

    info = supernet_info(
        args.method,
        args.space,
        args.nodes,
        args.C,
        args.layers,
        args.num_classes,
        args.in_channels,
        args.image_size,
    )
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastnas", description="Differentiable neural architecture search.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_search_parser(sub)
    _add_info_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"search": _run_search, "info": _run_info}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"fastnas {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
