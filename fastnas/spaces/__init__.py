"""Search spaces: what can be searched (op names, node count, cell types, edges)."""

from fastnas.spaces.darts import DartsSpace, Edge

SPACE_NAMES: tuple[str, ...] = ("darts",)


def build_space(name: str = "darts", **options: object) -> DartsSpace:
    """Build a search space by name; ``options`` are the space's fields (e.g. ``num_nodes=3``)."""
    if name == "darts":
        return DartsSpace(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown search space {name!r}; available: {', '.join(SPACE_NAMES)}")


__all__ = ["SPACE_NAMES", "DartsSpace", "Edge", "build_space"]
