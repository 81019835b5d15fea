"""Options that would silently do nothing useful are refused with one clear line (issue "Nothing silently
wrong", part 4): weight-only / warm-up epochs covering the whole search, a cutout that blanks every image,
an init scale that saturates the softmax, a 16-bit PNG clipped to 255, an NB201 table with impossible
accuracies."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastnas import SearchConfig
from fastnas.algorithms.darts import INIT_SCALE_MAX
from fastnas.cli import main
from fastnas.data import load_dataset
from fastnas.data.loader import cutout_mask
from fastnas.errors import ConfigError, DataError
from fastnas.methods import METHODS
from fastnas.nb201 import NB201Result, NB201Table
from fastnas.train.retrain_config import DATASET_SHAPES, TrainConfig

TINY = ["--dataset", "digits", "--limit", "32", "--C", "4", "--layers", "3", "--epochs", "1"]
TINY += ["--device", "cpu", "--no-progress"]


def refused(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, which must exit 2 with a one-line error and leave ``out`` empty; the line."""
    code = main([*argv, "--out-dir", str(out), "--run-name", "r"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir()), "a refused run left a run directory behind"
    return lines[0]


# ------------------------------------------------------------------ weight-only / warm-up epochs


@pytest.mark.parametrize(
    ("method", "flag", "value"),
    [
        ("pc-darts", "--arch-start-epoch", "1"),  # == --epochs: epoch 0 is weight-only, no other epoch
        ("pc-darts", "--arch-start-epoch", "7"),
        ("pc-darts", None, None),  # the published 15 (for 50 epochs) with --epochs 1
        ("edas", "--warmup-epochs", "1"),
        ("edas", "--warmup-epochs", "4"),
        ("edas", None, None),  # the published 10 (for 25 epochs)
    ],
)
def test_schedule_options_covering_every_epoch_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str, flag: str | None, value: str | None
) -> None:
    name = {"pc-darts": "arch_start_epoch", "edas": "warmup_epochs"}[method]
    given = [flag, value] if flag and value else []
    line = refused(["search", "--method", method, *TINY, *given], tmp_path / "out", capsys)
    shown = value or {"pc-darts": "15", "edas": "10"}[method]
    assert f"option {name} (--{name.replace('_', '-')}) {shown} is not below --epochs 1" in line, line
    # one epoch fewer than --epochs is a valid run: the last epoch trains the architecture
    config = SearchConfig(method=method, epochs=3, method_options={name: 2}).resolved()
    assert getattr(config.options, name) == 2
    with pytest.raises(ConfigError, match=f"{name}.*not below --epochs 3"):
        SearchConfig(method=method, epochs=3, method_options={name: 3}).resolved()


# ------------------------------------------------------------------------------------------- cutout


@pytest.mark.parametrize(
    ("dataset", "cutout", "accepted"),
    [
        ("digits", 16, False),  # 2 x 8: blank from every centre
        ("digits", 40, False),
        ("digits", 15, True),  # larger than the image, but a centre at row or column 0 leaves a strip
        ("digits", 8, True),
        ("cifar10", 64, False),
        ("cifar10", 63, True),
        ("imagenet", 16, False),  # the ImageNet loaders apply no cutout at all
    ],
)
def test_a_cutout_that_blanks_every_image_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: str, cutout: int, accepted: bool
) -> None:
    if accepted:
        assert TrainConfig(genotype="DARTS_V2", dataset=dataset, cutout=cutout).resolved().cutout == cutout
    else:
        argv = ["train", "--genotype", "DARTS_V2", "--dataset", dataset, "--cutout", str(cutout)]
        argv += ["--limit", "32", "--test-limit", "16", "--batch-size", "16", "--C", "4", "--layers", "3"]
        line = refused([*argv, "--epochs", "1", "--device", "cpu", "--no-progress"], tmp_path / "out", capsys)
        assert f"--cutout {cutout}" in line and dataset in line, line
    if dataset == "imagenet":
        return
    # the rule matches the loader's mask: blank from every centre exactly when the config refuses it
    size = DATASET_SHAPES[dataset][2]
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)
    blank = cutout_mask(centres, cutout, size, size).flatten(1).all(1)
    assert bool(blank.all()) is (not accepted)


# --------------------------------------------------------------------------------------- init scale

INIT_SCALE_METHODS = sorted(
    m for m, spec in METHODS.items() if "init_scale" in spec.Options.__dataclass_fields__
)


def test_every_method_with_an_init_scale_is_covered() -> None:
    assert {"darts", "pdarts", "pc-darts", "edas", "ddsas", "entrannas", "entrannas-dst"} <= set(
        INIT_SCALE_METHODS
    )
    for name in INIT_SCALE_METHODS:
        assert METHODS[name].Options.spec("init_scale").bounds == {"ge": 0, "le": INIT_SCALE_MAX}


@pytest.mark.parametrize("method", INIT_SCALE_METHODS)
@pytest.mark.parametrize("scale", ["1e30", "1.5"])
def test_an_init_scale_that_saturates_the_softmax_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str, scale: str
) -> None:
    line = refused(["search", "--method", method, *TINY, "--init-scale", scale], tmp_path / "out", capsys)
    assert f"option init_scale (--init-scale) must be <= {INIT_SCALE_MAX:g}, got {float(scale)!r}" in line
    assert "saturated" in line and "1e-3" in line, line
    options = METHODS[method].Options(init_scale=INIT_SCALE_MAX)  # the bound itself is allowed
    assert options.init_scale == INIT_SCALE_MAX  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------- 16-bit PNGs


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (greyscale ``[H, W]`` or RGB ``[H, W, 3]`` uint16), written byte by byte: Pillow
    writes 16-bit greyscale but not 16-bit RGB."""
    h, w = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.mark.filterwarnings("ignore:CIFAR-10 source")  # two images, not the official 50,000
@pytest.mark.parametrize("kind", ["grey-pil", "grey-bytes", "rgb-bytes"])
def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setenv("FASTNAS_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    shape = (6, 5, 3) if kind.startswith("rgb") else (6, 5)
    root = tmp_path / "tree"
    expected = []
    for cls in ("a", "b"):
        pixels = rng.integers(0, 65536, shape, dtype=np.uint16)
        pixels[0, 0] = 65535  # full white stays 255
        pixels[0, 1] = 257 * 100  # an 8-bit value scaled up by 257 comes back exactly
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        if kind == "grey-pil":
            Image.fromarray(pixels).save(folder / "0.png")  # Pillow: mode I;16
        else:
            (folder / "0.png").write_bytes(_png16(pixels))
        with Image.open(folder / "0.png") as img:
            assert img.mode in (("RGB",) if kind.startswith("rgb") else ("I;16", "I")), img.mode
            assert np.asarray(img).max() > 255 or kind.startswith("rgb")  # truly 16-bit data
        eight = (pixels >> 8).astype(np.uint8)
        expected.append(eight.transpose(2, 0, 1) if eight.ndim == 3 else np.repeat(eight[None], 3, axis=0))
    images = load_dataset("cifar10", root, "train").images.numpy()
    assert images.shape == (2, 3, 6, 5)
    np.testing.assert_array_equal(images, np.stack(expected))
    assert images[:, :, 0, 0].tolist() == [[255] * 3] * 2 and images[:, :, 0, 1].tolist() == [[100] * 3] * 2
    assert (images < 255).mean() > 0.9  # nothing saturated


# ---------------------------------------------------------------------------------------- NB201 table

_ARCHS = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
)
_HEADER = "index,arch_str,c10_valid_xvalid,c10_test_nats,c100_test_nats,in16_test_nats,params_M"


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("c10_test_nats", "nan", "not a finite number"),
        ("c100_test_nats", "-1.5", "not an accuracy in percent"),
        ("c10_valid_xvalid", "100.01", "not an accuracy in percent"),
        ("in16_test_nats", "inf", "not a finite number"),
        ("in16_test_nats", "-inf", "not a finite number"),
        ("params_M", "-0.2", "negative"),
        ("params_M", "nan", "not a finite number"),
    ],
)
def test_an_nb201_table_with_impossible_values_is_refused_on_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, value: str, why: str
) -> None:
    good = {"c10_valid_xvalid": "90.5", "c10_test_nats": "93.6", "c100_test_nats": "70.3"}
    good |= {"in16_test_nats": "44.0", "params_M": "0.8"}
    bad = {**good, column: value}
    columns = _HEADER.split(",")[2:]
    rows = [f"0,{_ARCHS[0]}," + ",".join(good[c] for c in columns)]
    rows.append(f"1,{_ARCHS[1]}," + ",".join(bad[c] for c in columns))  # line 3 of the file
    path = tmp_path / "table.csv"
    path.write_text("\n".join([_HEADER, *rows]) + "\n")
    with pytest.raises(DataError) as info:
        NB201Table.load(path)
    message = str(info.value)
    assert f"{path}, line 3, column {column}: " in message and why in message, message
    # through the CLI: a search that logs the table is refused before its run directory exists
    argv = ["search", "--space", "nb201", "--nb201-table", str(path), *TINY]
    line = refused(argv, tmp_path / "out", capsys)
    assert f"line 3, column {column}" in line, line
    # a table built in memory (e.g. from the official .pth) names the entry and the field
    field = {"c10_valid_xvalid": "c10_valid", "c10_test_nats": "c10_test", "c100_test_nats": "c100_test"}
    field |= {"in16_test_nats": "in16_test", "params_M": "params_M"}
    with pytest.raises(DataError, match=f"entry with index 7, {field[column]}: .*{why}"):
        NB201Table([NB201Result(7, _ARCHS[0], **{field[column]: float(value)})])
    # the boundaries are valid values
    NB201Table([NB201Result(7, _ARCHS[0], c10_test=0.0, c100_test=100.0, params_M=0.0)])


def test_the_imagenet_loader_scales_a_16_bit_grey_png_too(tmp_path: Path) -> None:
    from fastnas.data.imagenet import _load_rgb

    pixels = np.random.default_rng(1).integers(0, 65536, (7, 4), dtype=np.uint16)
    pixels[0, 0] = 65535
    Image.fromarray(pixels).save(tmp_path / "grey16.png")
    rgb = np.asarray(_load_rgb(str(tmp_path / "grey16.png")))
    assert rgb.shape == (7, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.repeat((pixels >> 8).astype(np.uint8)[..., None], 3, axis=2))
