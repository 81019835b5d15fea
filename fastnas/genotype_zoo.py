"""Published genotypes as their literal text, and the names they go by.

The cells published with (and in the ``genotypes.py`` of the public code of) DARTS (Liu, Simonyan & Yang,
"DARTS: Differentiable Architecture Search", ICLR 2019), P-DARTS (Chen, Xie, Wu & Tian, "Progressive
Differentiable Architecture Search: Bridging the Depth Gap between Search and Evaluation", ICCV 2019),
PC-DARTS (Xu, Xie, Zhang, Chen, Qi, Tian & Xiong, "PC-DARTS: Partial Channel Connections for
Memory-Efficient Architecture Search", ICLR 2020) and DDSAS (Yang, Hu, Lu, Sun, Mei, Zeng, Shi, Han & Li,
"DDSAS: Dynamic and Differentiable Space-Architecture Search", ACML 2021).

Pure data (no fastnas imports): :func:`fastnas.genotype.get_zoo_genotype` parses a literal on first use.
"""

from __future__ import annotations

__all__ = ["ZOO_ALIASES", "ZOO_LITERALS", "ZOO_NAMES", "resolve_zoo_name"]

# The published literals, verbatim (one `NAME = Genotype(...)` per line).
_LITERAL_BLOCK = """\
DARTS_V1 = Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])
DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])
PDARTS = Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)], reduce_concat=range(2, 6))
PC_DARTS_cifar = Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))
PC_DARTS_image = Genotype(normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 1), ('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)], reduce_concat=range(2, 6))
DDSAS_cifar10 = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 2), ('skip_connect', 0), ('sep_conv_5x5', 0), ('skip_connect', 1), ('sep_conv_5x5', 1), ('sep_conv_5x5', 3)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('sep_conv_5x5', 0), ('max_pool_3x3', 1), ('sep_conv_5x5', 0), ('max_pool_3x3', 0), ('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('sep_conv_5x5', 2)], reduce_concat=range(2, 6))
DDSAS_cifar100 = Genotype(normal=[('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 2)], normal_concat=range(2, 6), reduce=[('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 2), ('skip_connect', 1), ('sep_conv_3x3', 2), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3)], reduce_concat=range(2, 6))
DDSAS_imagenet = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('skip_connect', 2), ('sep_conv_5x5', 3)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('sep_conv_5x5', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_5x5', 2), ('skip_connect', 2), ('sep_conv_5x5', 3)], reduce_concat=range(2, 6))
"""  # noqa: E501  (verbatim published literals)

ZOO_LITERALS: dict[str, str] = {
    line.split("=", 1)[0].strip(): line for line in _LITERAL_BLOCK.splitlines() if line.strip()
}
"""Zoo name -> the literal line as published (``NAME = Genotype(...)``)."""

ZOO_NAMES: tuple[str, ...] = tuple(ZOO_LITERALS)

ZOO_ALIASES: dict[str, str] = {
    "DARTS": "DARTS_V2",
    "PC_DARTS": "PC_DARTS_cifar",
    "DDSAS": "DDSAS_cifar10",
    "P_DARTS": "PDARTS",
}
"""Short names for the usual default genotype of a method."""

_BY_KEY: dict[str, str] = {
    **{name.upper(): name for name in ZOO_NAMES},
    **{alias.upper(): target for alias, target in ZOO_ALIASES.items()},
}


def resolve_zoo_name(name: str) -> str | None:
    """Canonical zoo name for ``name`` (case-insensitive, ``-`` read as ``_``, aliases), or None."""
    if not isinstance(name, str):
        return None
    return _BY_KEY.get(name.strip().upper().replace("-", "_"))
