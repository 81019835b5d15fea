"""Checkpoints: round trip, integrity trailer, rotation to the previous one, fallback, unsafe pickles,
state checks, kills and full disks."""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fastnas.errors import CheckpointError, DiskFullError
from fastnas.fileio import remove_stale_temporaries
from fastnas.train.checkpoint import (
    LoadedCheckpoint,
    check_counters,
    check_epoch,
    check_finite,
    check_run_binding,
    check_state,
    has_checkpoint,
    load_checkpoint,
    numpy_rng_state,
    previous_checkpoint_path,
    save_checkpoint,
    set_numpy_rng_state,
    verify_checkpoint,
)

TRAILER = re.compile(rb"\nFASTNAS-CHECKPOINT v1 sha256=([0-9a-f]{64}) size=([0-9]+)\n\Z")


def with_trailer(payload: bytes) -> bytes:
    """The documented file format, built independently of the code under test."""
    digest = hashlib.sha256(payload).hexdigest()
    return payload + f"\nFASTNAS-CHECKPOINT v1 sha256={digest} size={len(payload)}\n".encode()


def torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Deep equality with bit-identical tensors and preserved container types."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class Trainer:
    """A tiny training setup with every kind of state a fastnas run checkpoints."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
        )
        params = list(self.model.parameters())
        self.sgd = torch.optim.SGD(params[:2], lr=0.1, momentum=0.9, weight_decay=3e-4)
        self.adam = torch.optim.Adam(params[2:], lr=1e-3, betas=(0.5, 0.999))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.sgd, T_max=10, eta_min=1e-3)
        self.scaler = torch.amp.GradScaler("cpu", enabled=True)
        self.off_scaler = torch.amp.GradScaler("cpu", enabled=False)

    def step(self) -> None:
        x = torch.randn(16, 4)
        loss = self.model(x).square().mean()
        self.sgd.zero_grad()
        self.adam.zero_grad()
        loss.backward()
        self.sgd.step()
        self.adam.step()
        self.scheduler.step()

    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "sgd": self.sgd.state_dict(),
            "adam": self.adam.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "off_scaler": self.off_scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate()},
            "genotype": {"normal": [["sep_conv_3x3", 0]], "concat": [2, 3]},
            "best": None,
            "flag": True,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.sgd.load_state_dict(state["sgd"])
        self.adam.load_state_dict(state["adam"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        set_numpy_rng_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])


def draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(5).tolist(), np.random.rand(5).tolist(), [random.random() for _ in range(5)]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 3, "weights": torch.arange(1000, dtype=torch.float32)})
    return path


# ------------------------------------------------------------------------------------ round trip
def test_round_trip_of_a_training_state_is_bit_identical_and_restores_rng(tmp_path: Path) -> None:
    trainer = Trainer(seed=0)
    for _ in range(3):
        trainer.step()
    np.random.seed(7)
    random.seed(7)
    state = copy.deepcopy(trainer.state(epoch=2))  # state_dict() tensors change as training goes on
    path = save_checkpoint(tmp_path / "checkpoint.pt", state)
    assert path == tmp_path / "checkpoint.pt"
    trainer.step()  # the original run continues ...
    continued = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    expected_draws = draws()  # ... and draws these numbers next

    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, LoadedCheckpoint)
    assert loaded.path == path and loaded.fell_back is False
    assert_same(loaded.state, state)
    assert loaded.state["scaler"]["scale"] == 65536.0 and loaded.state["off_scaler"] == {}

    resumed = Trainer(seed=99)
    resumed.load(loaded.state)
    resumed.step()  # the resumed run takes exactly the same step ...
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, continued[key]), key
    assert draws() == expected_draws  # ... and draws the same numbers from all three generators


def test_file_ends_with_the_documented_trailer_and_plain_torch_load_reads_it(saved: Path) -> None:
    data = saved.read_bytes()
    match = TRAILER.search(data)
    assert match is not None
    payload = data[: match.start()]
    assert int(match.group(2)) == len(payload)
    assert match.group(1).decode() == hashlib.sha256(payload).hexdigest()
    assert payload.startswith(b"PK\x03\x04")  # torch's zip format
    direct = torch.load(saved, weights_only=True)
    assert direct["epoch"] == 3
    assert torch.equal(direct["weights"], torch.arange(1000, dtype=torch.float32))
    assert verify_checkpoint(saved) == payload


def test_save_refuses_states_weights_only_cannot_read_back(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['rng'\]\['numpy'\]\[1\].*numpy_rng_state"):
        save_checkpoint(tmp_path / "c.pt", {"rng": {"numpy": np.random.get_state()}})
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint(tmp_path / "c.pt", [1, 2])  # type: ignore[arg-type]
    assert not (tmp_path / "c.pt").exists()


# ---------------------------------------------------------------------------------- corruption
def corruptions(good: bytes) -> dict[str, bytes]:
    match = TRAILER.search(good)
    assert match is not None
    payload = good[: match.start()]
    n, zeros = len(good), "0" * 64
    forms = {
        "empty": b"",
        "zeros": bytes(n),
        "random": np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes(),
        "trailer removed": payload,
        "trailer garbled": payload + b"\nFASTNAS-CHECKPOINT v1 sha256=zzzz size=12\n",
        "wrong size": payload + f"\nFASTNAS-CHECKPOINT v1 sha256={zeros} size={len(payload) + 1}\n".encode(),
        "wrong checksum": payload + f"\nFASTNAS-CHECKPOINT v1 sha256={zeros} size={len(payload)}\n".encode(),
        "bytes appended": good + b"extra",
        "payload shortened, trailer kept": payload[:-10] + good[match.start() :],
    }
    for cut in (1, 100, n // 2, n - 60, n - 1):
        forms[f"truncated to {cut}"] = good[:cut]
    for pos in (0, 30, len(payload) // 2, len(payload) - 1, len(payload) + 5, n - 20, n - 2):
        flipped = bytearray(good)
        flipped[pos] ^= 0x01
        forms[f"bit flipped at {pos}"] = bytes(flipped)
    return forms


def test_every_corrupt_form_fails_verification_naming_the_file(saved: Path) -> None:
    good = saved.read_bytes()
    for name, data in corruptions(good).items():
        assert data != good, name
        saved.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            verify_checkpoint(saved)
        message = str(info.value)
        assert str(saved) in message, name
        assert "start the run again" in message, name
        with pytest.raises(CheckpointError):
            load_checkpoint(saved)


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ("empty", "empty"),
        ("zeros", "zero bytes"),
        ("random", "not written by this version of fastnas"),
        ("trailer removed", "truncated"),
        ("trailer garbled", "garbled"),
        ("wrong size", "trailer records"),
        ("payload shortened, trailer kept", "trailer records"),
        ("wrong checksum", "checksum does not match"),
        ("bit flipped at 30", "checksum does not match"),
    ],
)
def test_corruption_messages_say_what_is_wrong(saved: Path, form: str, words: str) -> None:
    saved.write_bytes(corruptions(saved.read_bytes())[form])
    with pytest.raises(CheckpointError, match=re.escape(words)):
        verify_checkpoint(saved)


def test_missing_file_and_folder_fail_verification(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=re.escape(f"no checkpoint at {tmp_path / 'nope.pt'}")):
        verify_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="not a regular file"):
        verify_checkpoint(tmp_path / "dir.pt")


def test_newer_format_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    payload = torch_bytes({"epoch": 0})
    path.write_bytes(payload + f"\nFASTNAS-CHECKPOINT v2 sha256={'a' * 64} size={len(payload)}\n".encode())
    with pytest.raises(CheckpointError, match="newer fastnas"):
        verify_checkpoint(path)


def test_damage_advice_points_to_the_previous_checkpoint_when_there_is_one(saved: Path) -> None:
    save_checkpoint(saved, {"epoch": 4})
    saved.write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match=r"resume from the previous checkpoint checkpoint\.prev\.pt"):
        verify_checkpoint(saved)


# ------------------------------------------------------------------------- rotation and fallback
def test_rotation_keeps_the_previous_good_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    prev = tmp_path / "checkpoint.prev.pt"
    assert previous_checkpoint_path(path) == prev
    assert not has_checkpoint(path)
    save_checkpoint(path, {"epoch": 0})
    assert not prev.exists()
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert torch.load(path, weights_only=True)["epoch"] == 2
    assert torch.load(prev, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_a_damaged_checkpoint_never_replaces_the_previous_good_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    prev = previous_checkpoint_path(path)
    save_checkpoint(path, {"epoch": 0})
    save_checkpoint(path, {"epoch": 1})
    path.write_bytes(path.read_bytes()[:-7])  # epoch 1 gets damaged
    save_checkpoint(path, {"epoch": 2})
    assert torch.load(prev, weights_only=True)["epoch"] == 0
    assert load_checkpoint(path).state["epoch"] == 2


def test_fallback_to_the_previous_checkpoint_warns(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 0})
    save_checkpoint(path, {"epoch": 1})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    messages: list[str] = []
    loaded = load_checkpoint(path, warn=messages.append)
    assert loaded.state == {"epoch": 0}
    assert loaded.fell_back is True and loaded.path == tmp_path / "checkpoint.prev.pt"
    assert len(messages) == 1
    assert str(path) in messages[0] and "checksum" in messages[0]
    assert "continues from the previous checkpoint" in messages[0]

    with pytest.warns(RuntimeWarning, match="continues from the previous checkpoint"):
        assert load_checkpoint(path).state == {"epoch": 0}
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path, fallback=False)


def test_both_checkpoints_bad_names_both_problems(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    prev = previous_checkpoint_path(path)
    path.write_bytes(b"")
    prev.write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, warn=pytest.fail)
    message = str(info.value)
    assert f"{path} is damaged: it is empty" in message
    assert f"{prev} is damaged: it holds only zero bytes" in message
    assert message.endswith("start the run again")


def test_missing_checkpoint_without_previous(tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointError, match=r"there is no previous checkpoint checkpoint\.prev\.pt, so start the run again"
    ):
        load_checkpoint(tmp_path / "checkpoint.pt", warn=pytest.fail)


def test_only_the_previous_checkpoint_left_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 0})
    save_checkpoint(path, {"epoch": 1})
    path.unlink()  # what a kill between the two renames leaves
    assert has_checkpoint(path)
    messages: list[str] = []
    loaded = load_checkpoint(path, warn=messages.append)
    assert loaded.state == {"epoch": 0} and loaded.fell_back
    assert f"no checkpoint at {path}" in messages[0]
    save_checkpoint(path, {"epoch": 1})  # the resumed run saves again: the previous one stays
    assert load_checkpoint(path, warn=pytest.fail).state == {"epoch": 1}
    assert torch.load(previous_checkpoint_path(path), weights_only=True) == {"epoch": 0}


KILL_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
from fastnas.train.checkpoint import save_checkpoint
path = Path(sys.argv[1])
real_replace = os.replace
def replace(src, dst):
    if Path(dst) == path and Path(src).name.endswith(".tmp"):
        os._exit(137)  # killed after the old checkpoint moved aside, before the new one took its place
    real_replace(src, dst)
os.replace = replace
save_checkpoint(path, {"epoch": 1})
"""


def test_a_real_kill_between_the_renames(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 0})
    script = textwrap.dedent(KILL_BETWEEN_RENAMES)
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, timeout=120)
    assert done.returncode == 137, done.stderr.decode()
    assert not path.exists()
    stale = list(tmp_path.glob(".checkpoint.pt.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size > 0
    messages: list[str] = []
    assert load_checkpoint(path, warn=messages.append).state == {"epoch": 0}
    assert messages
    assert remove_stale_temporaries(tmp_path) == stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt"]


def test_stale_temporary_from_a_kill_is_removed(saved: Path) -> None:
    stale = saved.parent / ".checkpoint.pt.k2j4x9.tmp"
    stale.write_bytes(b"PK\x03\x04half a checkpoint")
    assert remove_stale_temporaries(saved.parent) == [stale]
    assert not stale.exists()
    assert load_checkpoint(saved, warn=pytest.fail).state["epoch"] == 3


# ------------------------------------------------------------------------------- unsafe content
class RunsCode:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): code runs at load time."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    payload = torch_bytes({"epoch": 0, "evil": RunsCode(marker)})
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(with_trailer(payload))
    verify_checkpoint(path)  # the checksum is valid
    with pytest.raises(CheckpointError, match="it may be malicious") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "contains objects fastnas does not write" in str(info.value)
    assert not marker.exists()

    # the payload is really dangerous: an unsafe load would have created the marker
    probe = tmp_path / "PROBE"
    torch.load(io.BytesIO(torch_bytes(RunsCode(probe))), weights_only=False)
    assert probe.exists()


def test_a_state_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    for name, obj in {"tensor.pt": torch.zeros(3), "list.pt": [1, 2]}.items():
        path = tmp_path / name
        path.write_bytes(with_trailer(torch_bytes(obj)))
        with pytest.raises(CheckpointError, match=f"holds a {type(obj).__name__}, not the dict"):
            load_checkpoint(path)


def test_valid_checksum_over_bytes_torch_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(with_trailer(b"not a zip archive at all"))
    with pytest.raises(CheckpointError, match="torch cannot read it"):
        load_checkpoint(path)


# -------------------------------------------------------------------------------- state checks
SCHEMA = {"epoch": int, "model": dict, "rng": dict, "best": (float, type(None))}


def test_check_state_accepts_a_fitting_state() -> None:
    check_state({"epoch": 3, "model": {}, "rng": {}, "best": None, "extra": 1}, SCHEMA, "c.pt")
    check_state({"epoch": 0, "model": {}, "rng": {}, "best": 1}, SCHEMA, "c.pt")  # int is a float


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            {"model": {}, "rng": {}, "best": None},
            "checkpoint c.pt has no 'epoch' entry (it holds: best, model, rng)",
        ),
        ({"epoch": True, "model": {}, "rng": {}, "best": None}, "'epoch' should be int but is bool"),
        ({"epoch": "3", "model": {}, "rng": {}, "best": None}, "'epoch' should be int but is str"),
        ({"epoch": 1, "model": [], "rng": {}, "best": None}, "'model' should be dict but is list"),
        ({"epoch": 1, "model": {}, "rng": {}, "best": "x"}, "'best' should be float or NoneType but is str"),
    ],
)
def test_check_state_names_file_key_and_types(state: dict[str, Any], message: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(message)):
        check_state(state, SCHEMA, "c.pt")


def test_check_epoch_range() -> None:
    check_epoch(0, 5, "c.pt")
    check_epoch(4, 5, "c.pt")
    for epoch in (-1, 5, 50):
        with pytest.raises(
            CheckpointError, match=f"c.pt records epoch {epoch}, outside 0 to 4 for this run's 5"
        ):
            check_epoch(epoch, 5, "c.pt")
    for epoch in (True, 2.0, None):
        with pytest.raises(CheckpointError, match=f"'epoch' should be int but is {type(epoch).__name__}"):
            check_epoch(epoch, 5, "c.pt")


def test_check_finite_names_the_tensor_and_the_way_back(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    state = {"epoch": 2, "model": {"bn.running_var": torch.tensor([1.0, float("nan")])}, "rng": {}}
    with pytest.raises(CheckpointError, match=re.escape("model['bn.running_var'] holds 1 NaN of its 2")):
        check_finite(state, path)
    previous_checkpoint_path(path).write_bytes(b"")
    with pytest.raises(CheckpointError, match="delete it to continue from the previous checkpoint"):
        check_finite(state, path)
    check_finite({"epoch": 2, "model": {"w": torch.ones(3)}, "lr": 0.1}, path)


def test_check_counters_ties_the_schedule_to_the_epoch(tmp_path: Path) -> None:
    state = {"scheduler": {"last_epoch": 3}, "scaler": {"scale": 65536.0}, "off": {}}
    check_counters(state, tmp_path / "c.pt", epoch=3, schedules={"scheduler": 3}, scalers=("scaler", "off"))
    with pytest.raises(CheckpointError, match=r"scheduler.last_epoch is 3, but after epoch 2 .* 2 step"):
        check_counters(state, tmp_path / "c.pt", epoch=2, schedules={"scheduler": 2})
    state["scaler"]["scale"] = -1.0
    with pytest.raises(CheckpointError, match="scaler.scale is -1.0, not a positive loss scale"):
        check_counters(state, tmp_path / "c.pt", epoch=3, schedules={}, scalers=("scaler",))


@pytest.mark.parametrize(
    ("recorded_id", "current_id", "message"),
    [
        ("b" * 32, "a" * 32, "belongs to another run: its run id is bbbb"),
        (None, "a" * 32, "belongs to another run: its run id is none (a run of an earlier fastnas)"),
        ("", "a" * 32, "belongs to another run"),
    ],
)
def test_check_run_binding_refuses_another_run_id(
    tmp_path: Path, recorded_id: str | None, current_id: str, message: str
) -> None:
    settings = {"seed": 0, "lr": 0.025}
    with pytest.raises(CheckpointError, match=re.escape(message)) as caught:
        check_run_binding(
            tmp_path / "checkpoint.pt", {**settings, "run_id": recorded_id or ""},
            {**settings, "run_id": current_id}, tmp_path / "config.json", print, recorded_run_id=recorded_id,
        )  # fmt: skip
    assert "its settings are the same as this run's" in str(caught.value)


def test_check_run_binding_of_an_earlier_version_compares_settings_with_a_note(tmp_path: Path) -> None:
    notes: list[str] = []
    path, config = tmp_path / "checkpoint.pt", tmp_path / "config.json"
    settings = {"seed": 0, "run_id": ""}
    check_run_binding(path, settings, settings, config, notes.append, recorded_run_id=None)
    assert len(notes) == 1 and "recorded no run id; only its settings are checked" in notes[0]
    with pytest.raises(CheckpointError, match="'seed' is 1 in config.json but 0 in the checkpoint"):
        check_run_binding(path, settings, {**settings, "seed": 1}, config, notes.append, recorded_run_id=None)
    check_run_binding(path, None, settings, config, notes.append, recorded_run_id=None)  # no record at all
    assert "recorded neither a run id nor the run's settings" in notes[-1]


def test_numpy_rng_state_is_plain_and_restores_the_stream() -> None:
    np.random.seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in the state
    state = numpy_rng_state()
    assert type(state["keys"]) is list and len(state["keys"]) == 624
    assert all(type(k) is int for k in state["keys"]) and type(state["pos"]) is int
    expected = np.random.standard_normal(4).tolist()
    np.random.seed(6)
    set_numpy_rng_state(state)
    assert np.random.standard_normal(4).tolist() == expected
    with pytest.raises(CheckpointError, match="checkpoint c.pt holds an unusable NumPy random state"):
        set_numpy_rng_state({"kind": "MT19937", "keys": [1, 2]}, "c.pt")


# ---------------------------------------------------------------------------------- disk full
class FullDiskHandle:
    """A file handle whose writes fail halfway with ENOSPC, like a disk filling up."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, data: bytes) -> int:
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> FullDiskHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def _full_disk_at_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDiskHandle(real_fdopen(*a, **k)))


def _full_disk_at_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("fail", [_full_disk_at_write, _full_disk_at_fsync])
def test_disk_full_keeps_the_checkpoint_and_the_previous_one(tmp_path: Path, monkeypatch, fail) -> None:
    path = tmp_path / "checkpoint.pt"
    prev = previous_checkpoint_path(path)
    save_checkpoint(path, {"epoch": 0})
    save_checkpoint(path, {"epoch": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fail(monkeypatch)
    with pytest.raises(DiskFullError) as info:
        save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(10_000)})
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert str(path) in str(info.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary left either
    assert load_checkpoint(path, warn=pytest.fail).state == {"epoch": 1}
    assert load_checkpoint(prev, warn=pytest.fail).state == {"epoch": 0}
