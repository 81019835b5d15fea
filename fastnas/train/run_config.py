"""Run-level settings shared by the search and the retraining configurations.

The settings fields that both commands offer with the same flag, default and help
(:func:`device_setting`, :func:`tensorboard_setting`, :func:`out_dir_setting`), and :class:`RunConfig`,
the base of :class:`~fastnas.train.search_config.ResolvedSearchConfig` and
:class:`~fastnas.train.retrain_config.ResolvedTrainConfig`: the run directory, the checks of the
run-level values (worker processes, epoch numbering, world size and scaling choices, run name) and the
``config.json`` round trip (every key known, every value of the right type, then validated).
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from fastnas.errors import ConfigError
from fastnas.fields import field_types, load_fields, setting
from fastnas.fileio import check_folder_name, expand_user, read_json_file
from fastnas.train.checkpoint import read_run_config
from fastnas.train.run_state import EPOCH_BASE, check_epoch_base
from fastnas.train.scaling import check_scaling_choices

__all__ = ["RunConfig", "device_setting", "out_dir_setting", "tensorboard_setting"]

_Config = TypeVar("_Config", bound="RunConfig")


def device_setting() -> Any:
    """The ``--device`` field."""
    return setting("auto", "auto, cpu, cuda or cuda:N")


def tensorboard_setting() -> Any:
    """The ``--tensorboard`` switch."""
    return setting(False, "write TensorBoard events to RUN_DIR/tensorboard", const=True)


def out_dir_setting() -> Any:
    """The ``--out-dir`` field."""
    return setting("runs", "parent folder of run directories")


@dataclass(frozen=True, kw_only=True)
class RunConfig(abc.ABC):
    """Base of the resolved configurations of a run: the run-level fields both have (keyword-only, after
    each subclass's own fields in ``__init__``) and the methods below.

    ``world_size``: processes of the run (torchrun; batch sizes are per process); ``lr_scaling``: how the
    learning rates were scaled to it (they are recorded scaled); ``epoch_base``: how the run's files
    number epochs (1: the first epoch is ``"epoch": 1``, as in the log; 0 in the ``config.json`` of a run
    of an earlier fastnas, which keeps its numbering when resumed); ``run_id``: set when the run starts and
    recorded in ``config.json`` and every checkpoint (``""`` before fastnas wrote it).
    """

    #: what a folder whose config.json this class reads is (in the error naming a folder without one)
    run_kind: ClassVar[str] = "a run directory"
    #: a key that only this kind of run's config.json has
    own_key: ClassVar[str] = ""

    loader: str
    lr_scaling: str
    dist_backend: str
    world_size: int
    workers: int
    seed: int
    device: str
    precision: str
    tensorboard: bool
    out_dir: str
    run_name: str
    epoch_base: int = EPOCH_BASE
    run_id: str = ""

    @property
    def run_dir(self) -> Path:
        return expand_user(self.out_dir, "--out-dir") / self.run_name

    def check_run_settings(self) -> None:
        """Range checks of the run-level values (:class:`~fastnas.errors.ConfigError` naming the option)."""
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        check_epoch_base(self.epoch_base)
        check_scaling_choices(self)
        check_folder_name(self.run_name, "--run-name")

    def validate(self) -> None:
        self.check_run_settings()

    def field_values(self) -> dict[str, Any]:
        """Every field by name, in the order of the dataclass."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def json_fields(cls, data: Any, where: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """The fields (less ``exclude``) of a ``config.json`` object: every key known, every value of the
        right type, none missing."""
        values = load_fields(cls, data, where, exclude=exclude)
        absent = [name for name in field_types(cls) if name not in (*exclude, *values)]
        if absent:
            raise ConfigError(
                f"{where} lacks the key(s) {absent}; it was not written by this version of fastnas"
            )
        return values

    @classmethod
    def checked(cls: type[_Config], where: str, **values: Any) -> _Config:
        """The config of ``values``, validated; a :class:`~fastnas.errors.ConfigError` names ``where``."""
        try:
            config = cls(**values)
            config.validate()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return config

    @classmethod
    @abc.abstractmethod
    def from_json(cls: type[_Config], data: Any, where: str = "config.json") -> _Config:
        """The config recorded in ``data`` (a ``config.json`` object), every key and value checked: each kind
        of run reads its own keys (method options, the recipe) and builds itself with :meth:`checked`."""

    @classmethod
    def read_run(cls: type[_Config], run_dir: Path, *, foreign_key: str, foreign: str) -> _Config:
        """The config of the run in ``run_dir``, to resume it: its ``config.json`` (a key given twice is
        refused, :func:`~fastnas.train.checkpoint.read_run_config`) read by :meth:`from_json`. The
        ``config.json`` of the other command's runs (one with ``foreign_key`` and without :attr:`own_key`)
        is a :class:`~fastnas.errors.ConfigError` saying ``run_dir is <foreign>``."""
        config_path = run_dir / "config.json"
        data = read_run_config(config_path, f"{run_dir} is not {cls.run_kind} (no config.json)")
        if isinstance(data, dict) and foreign_key in data and cls.own_key not in data:
            raise ConfigError(f"{run_dir} is {foreign}")
        return cls.from_json(data, str(config_path))

    @classmethod
    def load(cls: type[_Config], path: str | Path) -> _Config:
        """Read the ``config.json`` at ``path`` (:meth:`from_json`)."""
        path = Path(path)
        data = read_json_file(path, f"{path.parent} is not {cls.run_kind} (no config.json)")
        return cls.from_json(data, str(path))
