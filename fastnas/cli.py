"""Command line: ``fastnas search``, ``fastnas sweep``, ``fastnas train`` and ``fastnas info``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastnas.algorithms import METHODS
from fastnas.data import DATASET_NAMES
from fastnas.spaces import SPACE_DEFAULTS, SPACE_NAMES
from fastnas.train.device import PRECISIONS

if TYPE_CHECKING:
    from fastnas.train import SearchConfig
    from fastnas.train.train_config import TrainConfig


def _add_search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="run an architecture search",
        description="Run a differentiable architecture search. Hyper-parameters left unset take the "
        "method's published defaults (REFERENCE.md).",
    )
    p.add_argument("--method", default="darts", choices=sorted(METHODS))
    _add_search_options(p)
    p.add_argument("--out-dir", default="runs", help="parent folder of run directories")
    p.add_argument("--run-name", default=None, help="run directory name (default: method-dataset-seed-time)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    p.add_argument("--seed", type=int, default=2)


def _add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run several seeds of one or more methods and summarise them",
        description="Multi-seed harness: runs every (method, seed) search into OUT_DIR (finished runs are "
        "reused, unfinished ones resumed) and writes summary.md and summary.json (mean and standard "
        "deviation of the NAS-Bench-201 table accuracy where a table is given, of the supernet accuracy, "
        "the skip-connect count and the search time).",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["darts"],
        help="methods, each optionally with options: darts darts:order=2",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    _add_search_options(p)
    p.add_argument("--out-dir", default="sweeps/sweep", help="folder of the sweep's runs and summary")


def _add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--order",
        type=int,
        choices=(1, 2),
        default=None,
        help="DARTS architecture gradient: 1 = first order (default), 2 = second order",
    )
    p.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        default=None,
        help="EnTranNAS-DST sparsity regulariser lambda (Eq. 11; default 0.1)",
    )
    p.add_argument(
        "--tau0", type=float, default=None, help="EnTranNAS(-DST) initial softmax temperature (default 5.0)"
    )
    p.add_argument(
        "--tau-decay", type=float, default=None, help="EnTranNAS(-DST) temperature factor per epoch (0.923)"
    )
    p.add_argument(
        "--engine-cells",
        default=None,
        help="EnTranNAS Engine-cells: first (default, Figure 4), last, half, all, or cell indices like 0,2",
    )
    p.add_argument(
        "--no-feature-sharing",
        dest="feature_sharing",
        action="store_const",
        const=False,
        default=None,
        help="EnTranNAS: op weights per edge instead of per source node (Table 3 ablation)",
    )
    p.add_argument(
        "--bottleneck",
        type=int,
        default=None,
        help="EnTranNAS channel reduction ratio before the candidate ops (4; 0 = off)",
    )
    p.add_argument("--space", default="darts", choices=SPACE_NAMES)
    p.add_argument("--nodes", type=int, default=4, help="intermediate nodes per cell (darts space)")
    p.add_argument(
        "--nb201-table",
        default=None,
        metavar="PATH",
        help="NAS-Bench-201 results (.csv like nb201.csv, or the official .pth): "
        "log each epoch's cell accuracy",
    )
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
    p.add_argument(
        "--layers", type=int, default=None, help="number of cells (darts), cells per stage (nb201)"
    )
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
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="autocast precision (GPU runs)")
    p.add_argument(
        "--executor",
        default="reference",
        choices=("reference", "fast"),
        help="how search cells run: reference (the DARTS loop) or fast (batched edges, fused kernels on "
        "CUDA; DARTS-space supernets)",
    )
    p.add_argument("--nondeterministic", action="store_true", help="allow non-deterministic kernels")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    from fastnas.train.train_config import PRECISION_CHOICES, SCHEDULES, TRAIN_DATASETS

    p = sub.add_parser(
        "train",
        help="retrain a genotype's evaluation network (or evaluate a checkpoint)",
        description="Train the evaluation network of a genotype from scratch. Hyper-parameters left unset "
        "take the dataset's published recipe (REFERENCE.md section 3): CIFAR 600 epochs, batch 96, C=36, "
        "20 layers, SGD 0.025 cosine, wd 3e-4, aux 0.4, cutout 16, drop path 0.2; ImageNet 250 epochs, "
        "batch 128, C=48, 14 layers, SGD 0.1 x0.97 per epoch, wd 3e-5, label smoothing 0.1, aux 0.4.",
    )
    p.add_argument(
        "--genotype",
        default=None,
        help="zoo name (see `fastnas info --list-genotypes`), a Genotype(...) literal, a genotype JSON or "
        "text file, or a search run directory (its genotype.json)",
    )
    p.add_argument("--dataset", default="cifar10", choices=TRAIN_DATASETS)
    p.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR: python batches, image-folder tree or .tar(.gz); ImageNet: a folder with train/ and val/ "
        "ImageFolder trees or a .tar of one",
    )
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only N training images (quick runs; CIFAR: the first N, ImageNet: a fixed random subset)",
    )
    p.add_argument(
        "--test-limit", type=int, default=None, help="use only the first N test images (default: --limit)"
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--C", "--init-channels", dest="C", type=int, default=None, help="initial channels")
    p.add_argument("--layers", type=int, default=None, help="number of cells")
    p.add_argument("--no-auxiliary", action="store_true", help="no auxiliary head")
    p.add_argument("--auxiliary-weight", type=float, default=None, help="weight of the auxiliary loss")
    p.add_argument("--cutout", type=int, default=None, help="cutout square side in pixels (0 = off)")
    p.add_argument("--drop-path", type=float, default=None, help="final drop-path probability")
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--lr", type=float, default=None, help="initial learning rate")
    p.add_argument("--lr-min", type=float, default=None, help="final learning rate of the cosine schedule")
    p.add_argument("--schedule", default=None, choices=SCHEDULES, help="cosine (CIFAR) or step (ImageNet)")
    p.add_argument("--lr-gamma", type=float, default=None, help="per-epoch decay of the step schedule")
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clip (0 = off)")
    p.add_argument(
        "--eval-every", type=int, default=1, help="test every N epochs (0 = only at the end; default 1)"
    )
    p.add_argument("--workers", type=int, default=4, help="data-loading processes (ImageNet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--precision", default="auto", choices=PRECISION_CHOICES, help="auto = bf16 on CUDA, fp32 on CPU"
    )
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory on CUDA")
    p.add_argument(
        "--nondeterministic",
        action="store_true",
        help="allow non-deterministic kernels on CPU too (CUDA runs use the cuDNN autotuner anyway)",
    )
    p.add_argument("--out-dir", default="runs", help="parent folder of run directories")
    p.add_argument("--run-name", default=None, help="run directory name (default: train-<genotype>-...)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    p.add_argument(
        "--eval-only",
        metavar="CHECKPOINT",
        default=None,
        help="only evaluate a checkpoint.pt (or a run directory) on the test set: top-1 / top-5",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_info_parser(sub: argparse._SubParsersAction) -> None:
    from fastnas.train.train_config import TRAIN_DATASETS

    p = sub.add_parser(
        "info",
        help="parameters and FLOPs of a supernet configuration or of a genotype's evaluation network",
        description="Without --genotype: the search supernet (defaults C=16, 8 layers, 10 classes, 32x32). "
        "With --genotype: its evaluation network (defaults the published sizes: CIFAR C=36, 20 layers; "
        "ImageNet C=48, 14 layers, 224x224).",
    )
    p.add_argument("--list-genotypes", action="store_true", help="list the genotype zoo")
    p.add_argument("--genotype", default=None, help="zoo name, literal, genotype file or search run dir")
    p.add_argument("--dataset", default="cifar10", choices=TRAIN_DATASETS, help="with --genotype")
    p.add_argument("--method", default="darts", choices=sorted(METHODS))
    p.add_argument("--space", default="darts", choices=SPACE_NAMES)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--C", "--init-channels", dest="C", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor options of the method given on the command line (unset ones are left out)."""
    import inspect

    flags = {
        "order": "--order",
        "lam": "--lambda",
        "tau0": "--tau0",
        "tau_decay": "--tau-decay",
        "engine_cells": "--engine-cells",
        "feature_sharing": "--no-feature-sharing",
        "bottleneck": "--bottleneck",
    }
    options = {key: getattr(args, key) for key in flags if getattr(args, key, None) is not None}
    engine = options.get("engine_cells")
    if isinstance(engine, str) and engine[:1].isdigit():
        options["engine_cells"] = [int(i) for i in engine.split(",")]
    method = getattr(args, "method", None)
    if method is not None:
        method_cls = METHODS[method]
        accepted = [*inspect.signature(method_cls.__init__).parameters, *method_cls.supernet_options]
        unknown = [flags[k] for k in options if k not in accepted]
        if unknown:
            raise SystemExit(f"fastnas: error: {', '.join(unknown)} does not apply to --method {method}")
    return options


def _search_config(args: argparse.Namespace) -> SearchConfig:
    """The search configuration of ``fastnas search`` / ``fastnas sweep`` arguments."""
    from fastnas.train import SearchConfig

    return SearchConfig(
        method=getattr(args, "method", "darts"),
        method_options=_method_options(args),
        space=args.space,
        nodes=args.nodes,
        nb201_table=args.nb201_table,
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
        seed=getattr(args, "seed", 2),
        device=args.device,
        precision=args.precision,
        executor=args.executor,
        deterministic=not args.nondeterministic,
        out_dir=args.out_dir,
        run_name=getattr(args, "run_name", None),
    )


def _run_search(args: argparse.Namespace) -> int:
    from fastnas.train import resume_search, run_search

    progress = not args.no_progress
    if args.resume:
        result = resume_search(
            args.resume, progress=progress, device=None if args.device == "auto" else args.device
        )
    else:
        try:
            result = run_search(_search_config(args), progress=progress)
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


def _run_sweep(args: argparse.Namespace) -> int:
    from fastnas.train.sweep import format_summary, run_sweep

    base = _search_config(args)
    result = run_sweep(base, args.methods, args.seeds, args.out_dir, progress=not args.no_progress)
    print(f"\nsweep directory: {args.out_dir}\n")
    print(format_summary(result["summary"]))
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from fastnas.train.train_config import TrainConfig

    return TrainConfig(
        genotype=args.genotype,
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        limit=args.limit,
        test_limit=args.test_limit,
        epochs=args.epochs,
        batch_size=args.batch_size,
        C=args.C,
        layers=args.layers,
        auxiliary=not args.no_auxiliary,
        auxiliary_weight=args.auxiliary_weight,
        cutout=args.cutout,
        drop_path=args.drop_path,
        label_smoothing=args.label_smoothing,
        lr=args.lr,
        lr_min=args.lr_min,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        schedule=args.schedule,
        lr_gamma=args.lr_gamma,
        eval_every=args.eval_every,
        workers=args.workers,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        channels_last=False if args.no_channels_last else None,
        deterministic=False if args.nondeterministic else None,
        out_dir=args.out_dir,
        run_name=args.run_name,
    )


def _run_train(args: argparse.Namespace) -> int:
    from fastnas.train.retrain import evaluate_checkpoint, resume_train, run_train

    progress = not args.no_progress
    device = None if args.device == "auto" else args.device
    if args.eval_only:
        result = evaluate_checkpoint(
            args.eval_only,
            device=device,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            test_limit=args.test_limit,
            progress=progress,
        )
        print(
            f"{result['checkpoint']} (epoch {result['epoch']}): test top-1 {result['test_top1']:.2f}% "
            f"top-5 {result['test_top5']:.2f}% loss {result['test_loss']:.4f} "
            f"({result['num_test_images']} images)"
        )
        return 0
    try:
        if args.resume:
            outcome = resume_train(args.resume, progress=progress, device=device)
        else:
            if args.genotype is None:
                raise ValueError(
                    "fastnas train needs --genotype (a zoo name such as DARTS_V2, a literal, a genotype file "
                    "or a search run directory), or --resume RUN_DIR, or --eval-only CHECKPOINT"
                )
            outcome = run_train(_train_config(args), progress=progress)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: continue with `fastnas train --resume <run directory>` "
            "(the last completed epoch is checkpointed)",
            file=sys.stderr,
        )
        return 130
    r = outcome.result
    print(f"\nrun directory: {outcome.run_dir}")
    print(
        f"test top-1 {r['test_top1']:.2f}% top-5 {r['test_top5']:.2f}% | parameters {r['parameters']:,} "
        f"(with auxiliary head {r['parameters_with_aux']:,}) | FLOPs {r['flops_per_image']:,}"
    )
    return 0


def _list_genotypes(as_json: bool) -> int:
    from fastnas.genotype_zoo import ZOO_ALIASES, ZOO_NAMES, get_zoo_genotype
    from fastnas.info import count_parameters_without_auxiliary
    from fastnas.nn.eval_network import NetworkCIFAR

    rows = []
    for name in ZOO_NAMES:
        genotype = get_zoo_genotype(name)
        params = count_parameters_without_auxiliary(NetworkCIFAR(36, 10, 20, False, genotype))
        aliases = [a for a, target in ZOO_ALIASES.items() if target == name]
        row = {"name": name, "aliases": aliases, "cifar10_parameters": params, "genotype": str(genotype)}
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<16} {'aliases':<12} CIFAR-10 parameters (C=36, 20 layers, no auxiliary head)")
    for row in rows:
        print(f"{row['name']:<16} {', '.join(row['aliases']) or '-':<12} {row['cifar10_parameters']:,}")
    print("\nuse a name with `fastnas info --genotype NAME` or `fastnas train --genotype NAME`")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from fastnas.info import format_info, format_network_info, network_info, supernet_info

    if args.list_genotypes:
        return _list_genotypes(args.json)
    if args.genotype is not None:
        info = network_info(
            args.genotype,
            args.dataset,
            C=args.C,
            layers=args.layers,
            num_classes=args.num_classes,
            in_channels=args.in_channels,
            image_size=args.image_size,
        )
        print(json.dumps(info, indent=2) if args.json else format_network_info(info))
        return 0
    info = supernet_info(
        args.method,
        args.space,
        args.nodes,
        16 if args.C is None else args.C,
        SPACE_DEFAULTS[args.space].get("layers", 8) if args.layers is None else args.layers,
        10 if args.num_classes is None else args.num_classes,
        3 if args.in_channels is None else args.in_channels,
        32 if args.image_size is None else args.image_size,
    )
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastnas", description="Differentiable neural architecture search.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_search_parser(sub)
    _add_sweep_parser(sub)
    _add_train_parser(sub)
    _add_info_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"search": _run_search, "sweep": _run_sweep, "train": _run_train, "info": _run_info}
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
