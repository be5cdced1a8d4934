"""Which splits of a split artifact a component works on (`exclude_splits`)."""
from __future__ import annotations

import logging


def included_splits(artifact, exclude: list[str], log: logging.Logger) -> list[str]:
    """The artifact's splits minus `exclude`; an unknown name is logged, none left is an error."""
    splits = artifact.splits
    if not splits:
        raise ValueError(f"{artifact!r} lists no split_names")
    unknown = sorted(set(exclude) - set(splits))
    if unknown:
        log.warning("exclude_splits names %s, which %s does not have (splits: %s)",
                    unknown, artifact.name or type(artifact).__name__, splits)
    included = [split for split in splits if split not in exclude]
    if not included:
        raise ValueError(f"exclude_splits {exclude} leaves none of the splits {splits}")
    return included
