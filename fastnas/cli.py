"""Command line: ``fastnas search``, ``fastnas sweep``, ``fastnas train`` and ``fastnas info``.

Flags are generated, never copied by hand: the run settings from the fields of
:class:`~fastnas.train.search_config.SearchConfig` and :class:`~fastnas.train.retrain_config.TrainConfig`
(their ``setting`` metadata), each method's options from its options dataclass (``fastnas search
--method NAME --help`` shows that method's section). Errors in what the user gave
(:class:`~fastnas.errors.FastnasError`) print one line and exit with status 2 (``--debug`` shows
their traceback); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args, get_origin

from fastnas.algorithms.options import OptionGroup
from fastnas.errors import ConfigError, FastnasError
from fastnas.fields import field_types, parse_text
from fastnas.methods import METHODS, PAPERS, Method
from fastnas.nn.supernet_options import supernet_options_class
from fastnas.train.distributed import is_main_process
from fastnas.train.retrain_config import TRAIN_DATASETS, TrainConfig
from fastnas.train.search_config import SearchConfig

__all__ = ["build_parser", "config_from_args", "main"]

_OPTION_DEST = "method_option__"
_SUPERNET_DEST = "supernet_option__"


def _converter(tp: Any, where: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse_text(text, tp, where)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = where  # argparse names the type in some messages
    return convert


def _plain_type(tp: Any) -> Any:
    """``int | None`` -> ``int``."""
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if get_origin(tp) is not None and len(args) == 1 and get_origin(tp) is not tuple else tp


def _add_settings(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    exclude: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
) -> list[str]:
    """One flag per field of config dataclass ``cls`` (from its ``setting`` metadata); returns the names."""
    types_of = field_types(cls)
    names = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in exclude or not meta.get("cli", True):
            continue
        flags = [meta.get("flag") or "--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
        default = (defaults or {}).get(f.name, f.default)
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": meta.get("help", "")}
        if "const" in meta:
            kwargs.update(action="store_const", const=meta["const"])
        else:
            tp = _plain_type(types_of[f.name])
            kwargs["type"] = _converter(tp, flags[0])
            choices = meta.get("choices")
            if choices:
                kwargs["choices"] = choices() if callable(choices) else choices
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
            if default not in (None, ()):
                kwargs["help"] += f" (default {default})"
        parser.add_argument(*flags, **kwargs)
        names.append(f.name)
    return names


def _add_method_options(parser: argparse.ArgumentParser, method: Method) -> None:
    """The ``--help`` section and the flags of ``method``'s options."""
    group = parser.add_argument_group(
        f"{method.name} options",
        f"{method.summary}. Paper: {method.paper}. Defaults are the published ones; other methods' options: "
        "`--method NAME --help`.",
    )
    _add_option_flags(group, method.Options, _OPTION_DEST)


def _add_supernet_options(parser: argparse.ArgumentParser) -> None:
    """The ``--help`` section and the flags of the supernet's options (every method's)."""
    group = parser.add_argument_group(
        "supernet options",
        "how the supernet's cells run (every method; defaults: the method's published ones)",
    )
    _add_option_flags(group, supernet_options_class(), _SUPERNET_DEST)


def _add_option_flags(group: argparse._ArgumentGroup, cls: type[OptionGroup], prefix: str) -> None:
    """One flag per option of ``cls``; a value lands in ``args`` as ``prefix + name`` only when given."""
    for spec in cls.specs():
        kwargs: dict[str, Any] = {"dest": prefix + spec.name, "default": argparse.SUPPRESS}
        if spec.type is not bool:
            kwargs["metavar"] = spec.name.upper()
        if spec.type is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, help=f"{spec.help} (default {spec.default})")
        else:
            kwargs.update(type=_converter(spec.type, spec.flag), help=spec.describe())
            choices = get_args(spec.type) if get_origin(spec.type) is Literal else spec.choices
            if choices is not None:
                kwargs["choices"] = choices
                del kwargs["metavar"]
        group.add_argument(spec.flag, **kwargs)


def _setting_flags(cls: type) -> dict[str, str]:
    """``{flag: field name}`` of every command-line setting of config dataclass ``cls`` (aliases too)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True):
            for flag in (
                f.metadata.get("flag") or "--" + f.name.replace("_", "-"),
                *f.metadata.get("aliases", ()),
            ):
                out[flag] = f.name
    return out


def _refuse_settings(argv: Sequence[str], cls: type, allowed: Sequence[str], mode: str) -> None:
    """With ``--resume`` / ``--eval-only`` the run's recorded settings apply: refuse any other setting given
    (a changed ``--epochs`` would, for instance, leave the old learning-rate schedule in place)."""
    flags = _setting_flags(cls)
    given = sorted({t.split("=", 1)[0] for t in argv if t.split("=", 1)[0] in flags} - set(allowed))
    if given:
        also = f"; allowed: {', '.join(allowed)}" if allowed else ""
        raise ConfigError(
            f"{mode} uses the run's recorded settings; {', '.join(given)} cannot be given with it "
            f"(start a new run to change them){also}"
        )


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options given on the command line (typed)."""
    return {k[len(_OPTION_DEST) :]: v for k, v in vars(args).items() if k.startswith(_OPTION_DEST)}


def _supernet_options(args: argparse.Namespace) -> dict[str, Any]:
    """The supernet options given on the command line (typed)."""
    return {k[len(_SUPERNET_DEST) :]: v for k, v in vars(args).items() if k.startswith(_SUPERNET_DEST)}


def _selected_method(argv: Sequence[str]) -> str:
    """The ``--method`` value in ``argv`` (default ``darts``), before the full parse."""
    for i, token in enumerate(argv):
        if token == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--method="):
            return token.split("=", 1)[1]
    return "darts"


def _flags_of_other_methods(flag: str) -> list[str]:
    name = flag.split("=", 1)[0]
    out = []
    for method in METHODS.values():
        for spec in method.Options.specs():
            negated = "--no-" + spec.flag[2:] if spec.type is bool else None
            if name in (spec.flag, negated):
                out.append(method.name)
    return out


class _Parser(argparse.ArgumentParser):
    """argparse, with a clear message for another method's option (``--tau0`` with ``--method darts``)."""

    method_name: str = "darts"

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        for token in extra:
            owners = _flags_of_other_methods(token) if token.startswith("--") else []
            if owners:
                self.error(
                    f"{token.split('=', 1)[0]} is an option of {', '.join(owners)}, not of --method "
                    f"{self.method_name}; `fastnas search --method {owners[0]} --help` lists its options"
                )
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")


def _add_repair_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repair-history",
        action="store_true",
        help="with --resume: instead of refusing damaged history files (metrics.jsonl, alphas.jsonl, "
        "sampling.jsonl), drop their damaged rows (not valid JSON, not an object, a bad, repeated or "
        "out-of-order epoch, NaN, unknown keys, zero bytes; a missing file counts as empty) and continue "
        "from the checkpoint; the finished epochs left without a row stay a gap in the history, noted in "
        "log.txt and repairs.json. Special files (a directory, a FIFO, a device) are still refused",
    )


def _repairing(args: argparse.Namespace) -> Any:
    """The context of a resume under ``--repair-history`` (refused without ``--resume``)."""
    from fastnas.train.run_state import repairing_histories

    if args.repair_history and not args.resume:
        raise ConfigError(
            "--repair-history mends the history files of a run being resumed; give --resume RUN_DIR"
        )
    return repairing_histories(args.repair_history)


_SEARCH_REFERENCES = (
    "References: "
    + "; ".join(
        f"{label}: {PAPERS[key]}"
        for label, key in (
            ("DARTS", "darts"),
            ("P-DARTS", "pdarts"),
            ("PC-DARTS", "pc-darts"),
            ("EDAS", "edas"),
            ("EnTranNAS and EnTranNAS-DST", "entrannas"),
            ("DDSAS", "ddsas"),
            ("the thesis variants (--nodes 3, --normal-types 3, --ops thesis, --exclude-ops, "
             "--derive grouping)", "thesis"),
            ("NAS-Bench-201 (--space nb201)", "nb201"),
        )
    )
    + "."
)  # fmt: skip


def _add_search_parser(sub: argparse._SubParsersAction, method: Method) -> None:
    p = sub.add_parser(
        "search",
        help="run an architecture search",
        description="Run a differentiable architecture search. Hyper-parameters left unset take the "
        "method's published defaults (the settings of its paper; see References below). Methods: "
        + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
        + ".",
        epilog=_SEARCH_REFERENCES,
    )
    _add_settings(p, SearchConfig)
    _add_supernet_options(p)
    _add_method_options(p, method)
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    _add_repair_flag(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run in an existing --run-name folder"
    )
    _common(p)


def _add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run several seeds of one or more methods and summarise them",
        description="Multi-seed harness: runs every (method, seed) search into OUT_DIR (finished runs are "
        "reused, unfinished ones resumed) and writes summary.md and summary.json (mean and standard "
        "deviation of the NAS-Bench-201 table accuracy where a table is given, of the supernet accuracy, "
        "the skip-connect count and the search time). Method options go into the method spec: "
        "darts:order=2, entrannas-dst:lam=0.2,bottleneck=0.",
        epilog=_SEARCH_REFERENCES,
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["darts"],
        help="methods, each optionally with options: darts darts:order=2",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    _add_settings(
        p, SearchConfig, exclude=("method", "seed", "run_name"), defaults={"out_dir": "sweeps/sweep"}
    )
    _add_supernet_options(p)
    _common(p)


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="retrain a genotype's evaluation network (or evaluate a checkpoint)",
        description="Train the evaluation network of a genotype from scratch. Hyper-parameters left unset "
        f"take the dataset's published recipe (that of {PAPERS['darts']}): CIFAR 600 epochs, batch 96, C=36, "
        "20 layers, SGD 0.025 cosine, wd 3e-4, aux 0.4, cutout 16, drop path 0.2; ImageNet 250 epochs, "
        "batch 128, C=48, 14 layers, SGD 0.1 x0.97 per epoch, wd 3e-5, label smoothing 0.1, aux 0.4.",
    )
    _add_settings(p, TrainConfig, defaults={"genotype": None})
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    _add_repair_flag(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run in an existing --run-name folder"
    )
    p.add_argument(
        "--eval-only",
        metavar="CHECKPOINT",
        default=None,
        help="only evaluate a checkpoint.pt (or a run directory) on the test set: top-1 / top-5",
    )
    _common(p)


def _add_info_parser(sub: argparse._SubParsersAction, method: Method) -> None:
    p = sub.add_parser(
        "info",
        help="parameters and FLOPs of a supernet configuration or of a genotype's evaluation network",
        description="Without --genotype: the search supernet (defaults C=16, 8 layers, 10 classes, 32x32). "
        "With --genotype: its evaluation network (defaults the published sizes: CIFAR C=36, 20 layers; "
        "ImageNet C=48, 14 layers, 224x224).",
        epilog=_SEARCH_REFERENCES,
    )
    p.add_argument("--list-genotypes", action="store_true", help="list the genotype zoo")
    p.add_argument("--genotype", default=None, help="zoo name, literal, genotype file or search run dir")
    p.add_argument("--dataset", default="cifar10", choices=TRAIN_DATASETS, help="with --genotype")
    p.add_argument("--method", default="darts", choices=tuple(METHODS))
    p.add_argument(
        "--space", default="darts", choices=SearchConfig.__dataclass_fields__["space"].metadata["choices"]
    )
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--C", "--init-channels", dest="C", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_method_options(p, method)
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")


def _add_rank_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rank",
        help="how well a NAS-Bench-201 search's supernet ranks architectures (Kendall tau, Spearman rho)",
        description="Scores architectures with the trained supernet's inherited weights (one-hot edge "
        "weights; BatchNorm statistics recomputed on a few training batches per architecture) on the "
        "architecture half of the search split, and correlates the scores with the table's CIFAR-10 test "
        "accuracy. Writes RUN_DIR/rank.json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of `fastnas search --space nb201`")
    p.add_argument("--nb201-table", required=True, metavar="PATH", help="nb201.csv or the official .pth")
    p.add_argument("--archs", type=int, default=50, metavar="N", help="random table cells to score")
    p.add_argument(
        "--arch-list", default=None, metavar="FILE", help="score these instead: one arch string per line"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of cells")
    p.add_argument("--bn-batches", type=int, default=4, help="training batches that re-estimate BN stats")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")


def _add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="pictures of a search run (PNG files in RUN_DIR/plots; needs matplotlib)",
        description="Loss and accuracy curves, edge-weight heatmaps and per-op curves, skip count (and "
        "NAS-Bench-201 accuracy), DDSAS sampling counts, P-DARTS stages and the derived cells as DAGs.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of `fastnas search`")
    p.add_argument("--epochs", type=int, nargs="+", default=None, help="heatmap epochs (1-based; default: "
                   "first, middle, last)")  # fmt: skip
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")


def _run_plot(args: argparse.Namespace) -> int:
    from fastnas.train.plots import plot_run

    written = plot_run(args.run_dir, args.epochs)
    for path in written.values():
        print(path)
    return 0


def _run_rank(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fastnas.nb201 import NB201Arch
    from fastnas.train.ranking import rank_architectures

    archs: int | list[NB201Arch] = args.archs
    if args.arch_list is not None:
        path = Path(args.arch_list)
        if not path.is_file():
            raise ConfigError(f"--arch-list {path} does not exist or is not a file")
        archs = [NB201Arch.parse(line) for line in path.read_text().splitlines() if line.strip()]
    rank_architectures(
        args.run_dir, args.nb201_table, archs, seed=args.seed, bn_batches=args.bn_batches,
        device=args.device, progress=not args.no_progress,
    )  # fmt: skip
    return 0


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; ``argv`` selects which method's options ``search`` and ``info`` accept."""
    name = _selected_method(list(argv or ()))
    method = METHODS.get(name.lower(), METHODS["darts"])  # an unknown name fails as a choice below
    parser = _Parser(prog="fastnas", description="Differentiable neural architecture search.")
    parser.method_name = method.name
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_search_parser(sub, method)
    _add_sweep_parser(sub)
    _add_train_parser(sub)
    _add_info_parser(sub, method)
    _add_rank_parser(sub)
    _add_plot_parser(sub)
    for action in sub.choices.values():
        action.method_name = method.name
    return parser


def config_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """Config ``cls`` from the parsed flags of its fields (the same names), plus ``extra``."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **extra})


def _interrupted(command: str) -> int:
    print(
        f"\ninterrupted: continue with `fastnas {command} --resume <run directory>` "
        "(the last completed epoch is checkpointed)",
        file=sys.stderr,
    )
    return 130


def _run_search(args: argparse.Namespace) -> int:
    from fastnas.train import resume_search, run_search

    progress = not args.no_progress
    repairing = _repairing(args)
    try:
        if args.resume:
            options = {**_supernet_options(args), **_method_options(args)}
            if options:
                raise ConfigError(
                    f"--resume continues a run with its recorded options; {', '.join(options)} cannot change"
                )
            _refuse_settings(args.argv, SearchConfig, ("--device",), "--resume")
            with repairing:
                result = resume_search(
                    args.resume, progress=progress, device=None if args.device == "auto" else args.device
                )
        else:
            config = config_from_args(
                SearchConfig,
                args,
                method_options=_method_options(args),
                supernet_options=_supernet_options(args),
            )
            result = run_search(config, progress=progress, overwrite=args.overwrite)
    except KeyboardInterrupt:
        return _interrupted("search")
    if not is_main_process():  # torchrun: rank 0 reports the run
        return 0
    print(f"\nrun directory: {result.run_dir}")
    print(f"genotype = {result.genotype.to_literal()}")
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    from fastnas.train.sweep import format_summary, run_sweep

    base = config_from_args(SearchConfig, args, supernet_options=_supernet_options(args))
    result = run_sweep(base, args.methods, args.seeds, args.out_dir, progress=not args.no_progress)
    print(f"\nsweep directory: {args.out_dir}\n")
    print(format_summary(result["summary"]))
    print(f"\ncurves: {result['plot']}" if result["plot"] else f"\nno curves: {result['plot_skipped']}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from fastnas.train.retrain import evaluate_checkpoint, resume_train, run_train

    progress = not args.no_progress
    device = None if args.device == "auto" else args.device
    repairing = _repairing(args)
    if args.eval_only:
        allowed = ("--data-dir", "--batch-size", "--test-limit", "--device")
        _refuse_settings(args.argv, TrainConfig, allowed, "--eval-only")
        if args.resume:
            raise ConfigError("give either --eval-only or --resume, not both")
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
            _refuse_settings(args.argv, TrainConfig, ("--device",), "--resume")
            with repairing:
                outcome = resume_train(args.resume, progress=progress, device=device)
        else:
            if args.genotype is None:
                raise ConfigError(
                    "fastnas train needs --genotype (a zoo name such as DARTS_V2, a literal, a genotype file "
                    "or a search run directory), or --resume RUN_DIR, or --eval-only CHECKPOINT"
                )
            outcome = run_train(
                config_from_args(TrainConfig, args), progress=progress, overwrite=args.overwrite
            )
    except KeyboardInterrupt:
        return _interrupted("train")
    if not is_main_process():
        return 0
    r = outcome.result
    print(f"\nrun directory: {outcome.run_dir}")
    print(
        f"test top-1 {r['test_top1']:.2f}% top-5 {r['test_top5']:.2f}% | parameters {r['parameters']:,} "
        f"(with auxiliary head {r['parameters_with_aux']:,}) | FLOPs {r['flops_per_image']:,}"
    )
    return 0


def _list_genotypes(as_json: bool) -> int:
    from fastnas.genotype import get_zoo_genotype
    from fastnas.genotype_zoo import ZOO_ALIASES, ZOO_NAMES
    from fastnas.nn import NetworkCIFAR
    from fastnas.nn.counting import count_parameters_without_auxiliary

    rows: list[dict[str, Any]] = []
    for name in ZOO_NAMES:
        genotype = get_zoo_genotype(name)
        params = count_parameters_without_auxiliary(NetworkCIFAR(36, 10, 20, False, genotype))
        aliases = [a for a, target in ZOO_ALIASES.items() if target == name]
        rows.append(
            {"name": name, "aliases": aliases, "cifar10_parameters": params, "genotype": str(genotype)}
        )
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
    from fastnas.spaces import SPACE_DEFAULTS

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
        options=_method_options(args),
    )
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "search": _run_search,
    "sweep": _run_sweep,
    "train": _run_train,
    "info": _run_info,
    "rank": _run_rank,
    "plot": _run_plot,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    args.argv = argv
    try:
        return _HANDLERS[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except FastnasError as exc:
        if args.debug:
            raise
        print(f"fastnas {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
