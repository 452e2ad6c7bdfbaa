"""Progress bars for long loops: tqdm on stderr, moved per batch, and only where someone watches (stderr is a
terminal); in logs and pipes the loops' own log lines (one per epoch) say how far they are."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


def bars_wanted(enabled: bool = True) -> bool:
    """Whether to draw bars: asked for, and stderr is a terminal."""
    try:
        return enabled and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def bar(desc: str, *, total: float | None = None, unit: str = "row", enabled: bool = True):
    """A tqdm bar on stderr (disabled unless :func:`bars_wanted`); ``update(n)`` it once per batch."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        disable=not bars_wanted(enabled),
    )


@contextlib.contextmanager
def logs_above_bars(enabled: bool = True) -> Iterator[None]:
    """While bars are drawn, log lines are written above them instead of through them."""
    if not bars_wanted(enabled):
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield
