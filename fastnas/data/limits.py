"""Bounds on what a dataset file may make fastnas allocate: image pixels, archive members, pickles.

A few kilobytes can claim gigabytes: a PNG whose header says 20000 x 10000 pixels, a ``.tar.gz`` member
of 1.5 GB of zeros, a pickle of nested lists that share references. Each is checked *before* the
memory is taken - from the image header (:func:`PIL.Image.open` is lazy), from the tar header
(``member.size``), from the pickle's opcodes - and refused with a :class:`~fastnas.errors.DataError` that
names the file (and the archive member). The bounds are far above what the datasets need; raise one with
its environment variable for unusual data:

=========================  ===============================  ==========================================
bound                      default                          environment variable
=========================  ===============================  ==========================================
:data:`MAX_IMAGE_PIXELS`   64 megapixels per image          ``FASTNAS_MAX_IMAGE_PIXELS``
:data:`MAX_MEMBER_BYTES`   512 MiB per archive member or    ``FASTNAS_MAX_MEMBER_BYTES``
                           python-batch file
:data:`MAX_PICKLE_OPS`     2,000,000 opcodes per batch      ``FASTNAS_MAX_PICKLE_OPS``
:data:`MAX_PICKLE_DEPTH`   8 nested containers              (fixed)
=========================  ===============================  ==========================================

(A CIFAR image has 1,024 pixels, an ImageNet photo rarely 20 megapixels; the largest CIFAR batch,
CIFAR-100's ``train``, has about 155 MB and at most 500,000 opcodes (protocol 2), its containers nest 3
deep.)
"""

from __future__ import annotations

import os
import pickletools
import re
import tarfile
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from fastnas.errors import ConfigError, DataError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_MEMBER_BYTES",
    "MAX_PICKLE_DEPTH",
    "MAX_PICKLE_OPS",
    "check_file_size",
    "check_image_pixels",
    "check_member_size",
    "check_pickle_opcodes",
    "describe_member",
    "limit",
    "open_image",
]

MAX_IMAGE_PIXELS = 64 * 1_000_000
"""Most pixels (width x height) of one image fastnas decodes (``FASTNAS_MAX_IMAGE_PIXELS``)."""
MAX_MEMBER_BYTES = 512 * 2**20
"""Largest archive member, or python-batch file, fastnas reads or extracts (``FASTNAS_MAX_MEMBER_BYTES``)."""
MAX_PICKLE_OPS = 2_000_000
"""Most pickle opcodes of one CIFAR python batch (``FASTNAS_MAX_PICKLE_OPS``)."""
MAX_PICKLE_DEPTH = 8
"""Deepest nesting of marked containers (lists, dicts, tuples being built) in a CIFAR python batch."""

_ENV = {
    "MAX_IMAGE_PIXELS": "FASTNAS_MAX_IMAGE_PIXELS",
    "MAX_MEMBER_BYTES": "FASTNAS_MAX_MEMBER_BYTES",
    "MAX_PICKLE_OPS": "FASTNAS_MAX_PICKLE_OPS",
}
_DEFAULTS = {"MAX_IMAGE_PIXELS": MAX_IMAGE_PIXELS, "MAX_MEMBER_BYTES": MAX_MEMBER_BYTES,
             "MAX_PICKLE_OPS": MAX_PICKLE_OPS}  # fmt: skip


def limit(name: str) -> int:
    """The bound ``name`` ("MAX_IMAGE_PIXELS", ...): its environment variable when set, else the default."""
    variable = _ENV[name]
    text = os.environ.get(variable, "").strip().replace("_", "")
    if not text:
        return _DEFAULTS[name]
    if not text.isdigit() or len(text) > 30 or int(text) < 1:
        raise ConfigError(f"{variable} must be a positive whole number, got {os.environ[variable]!r}")
    return int(text)


def _too_many_pixels(where: str, pixels: int, bound: int, dims: str = "") -> DataError:
    return DataError(
        f"image {where} has {pixels:,} pixels{dims}, more than the {bound:,} fastnas decodes "
        "(FASTNAS_MAX_IMAGE_PIXELS); replace or remove the file"
    )


def check_image_pixels(size: tuple[int, int], where: str) -> None:
    """Refuse an image of ``size`` (width, height, read from its header) above ``MAX_IMAGE_PIXELS``."""
    width, height = size
    bound = limit("MAX_IMAGE_PIXELS")
    if width * height > bound:
        raise _too_many_pixels(where, width * height, bound, f" ({width:,}x{height:,})")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as a decoded 8-bit RGB copy; a 16-bit grayscale image ("I;16", or "I" in older Pillow) is
    scaled to 8 bits (``x >> 8``, 65535 -> 255) where ``convert("RGB")`` would clip every value above 255."""
    if img.mode.startswith("I"):
        img = Image.fromarray((np.asarray(img).clip(0, 65535) >> 8).astype(np.uint8))
    return img.convert("RGB")  # a loaded copy even when already RGB: the file may be closed next


def open_image(source: str | Path | IO[bytes], where: str) -> Image.Image:
    """:func:`PIL.Image.open` (lazy: only the header is read) with the pixel bound checked before anything
    is decoded. PIL's own check (:class:`PIL.Image.DecompressionBombError`, above twice
    ``PIL.Image.MAX_IMAGE_PIXELS``) comes first for the largest images; it is reported the same way."""
    bound = limit("MAX_IMAGE_PIXELS")
    try:
        with warnings.catch_warnings():  # PIL warns from 89 megapixels on; the bound below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else 0
        if pixels > bound:
            raise _too_many_pixels(where, pixels, bound) from None
        raise DataError(
            f"image {where} has {pixels:,} pixels, more than PIL decodes (twice PIL.Image.MAX_IMAGE_PIXELS = "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,}); replace or remove the file"
        ) from None
    try:
        check_image_pixels(img.size, where)
    except DataError:
        img.close()
        raise
    return img


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    if member.isdir():
        return "a folder"
    return "a file" if member.isfile() else "a special member"


def check_member_size(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse an archive member whose header claims more than ``MAX_MEMBER_BYTES`` (before reading it)."""
    bound = limit("MAX_MEMBER_BYTES")
    if member.size > bound:
        raise DataError(
            f"archive {archive}: member {member.name!r} is {member.size:,} bytes, more than the {bound:,} "
            "fastnas reads from one member (FASTNAS_MAX_MEMBER_BYTES); no dataset file is that large - "
            "check the archive"
        )


def describe_member(member: tarfile.TarInfo) -> str:
    """What a tar member is, for messages: ``'a/../../x' (a file)``, ``'l' (a symbolic link to '/etc')``."""
    return f"{member.name!r} ({_kind(member)})"


def check_file_size(path: Path, where: str) -> None:
    """Refuse a file (a python batch) larger than ``MAX_MEMBER_BYTES`` before reading it."""
    bound = limit("MAX_MEMBER_BYTES")
    size = path.stat().st_size
    if size > bound:
        raise DataError(
            f"{where} is {size:,} bytes, more than the {bound:,} fastnas reads from one batch file "
            "(FASTNAS_MAX_MEMBER_BYTES); a CIFAR batch has at most 160 MB - check the file"
        )


_MARK_CONSUMERS = frozenset(
    {"APPENDS", "SETITEMS", "TUPLE", "LIST", "DICT", "FROZENSET", "ADDITEMS", "OBJ", "INST", "POP_MARK"}
)


def check_pickle_opcodes(data: bytes, where: str) -> None:
    """Walk the opcodes of a pickle without running it: more than ``MAX_PICKLE_OPS`` opcodes or marked
    containers nested deeper than :data:`MAX_PICKLE_DEPTH` is refused, as is a damaged stream."""
    bound = limit("MAX_PICKLE_OPS")
    depth = 0
    try:
        for count, (opcode, _arg, _pos) in enumerate(pickletools.genops(data), start=1):
            if count > bound:
                raise DataError(
                    f"{where} has more than {bound:,} pickle opcodes (FASTNAS_MAX_PICKLE_OPS); a CIFAR "
                    "python batch has at most about 500,000 - the file is not a CIFAR batch"
                )
            if opcode.name == "MARK":
                depth += 1
                if depth > MAX_PICKLE_DEPTH:
                    raise DataError(
                        f"{where} nests containers more than {MAX_PICKLE_DEPTH} deep; a CIFAR python batch "
                        "nests at most 3 (a dict of arrays and flat lists) - the file is not a CIFAR batch"
                    )
            elif opcode.name in _MARK_CONSUMERS:
                depth = max(depth - 1, 0)
    except DataError:
        raise
    except Exception as exc:  # pickletools raises ValueError and others for a damaged stream
        raise DataError(
            f"{where} is not a readable CIFAR python batch ({type(exc).__name__}: {exc})"
        ) from None
