"""Long steps announce themselves here; whoever runs them decides how (or whether) to show them.

Library code marks a step that may take more than a second with ``with phase("class centres"): ...``
(reading data, a split, a training stage, an evaluation). Nothing is shown unless a caller installed a
reporter with :func:`report_phases`: the CLI does (a live spinner on a terminal's stderr, see
:class:`sketchsearch.cli.app.Reporter`); library users and tests see nothing. This module knows nothing of
rich or of terminals, so any layer may import it.

A reporter is ``reporter(name, live) -> context manager`` entered around the step. ``live=False`` marks a step
that draws its own live display (the training loop's bar): a reporter should pause its own meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

__all__ = ["PhaseReporter", "phase", "report_phases"]

PhaseReporter = Callable[[str, bool], AbstractContextManager[object]]

_REPORTER: ContextVar[PhaseReporter | None] = ContextVar("sketchsearch_phase_reporter", default=None)


@contextmanager
def phase(name: str, *, live: bool = True) -> Iterator[None]:
    """Run the ``with`` block as the step ``name``, through the installed reporter (if any)."""
    reporter = _REPORTER.get()
    if reporter is None:
        yield
        return
    with reporter(name, live):
        yield


@contextmanager
def report_phases(reporter: PhaseReporter) -> Iterator[None]:
    """Show every :func:`phase` entered in the ``with`` block (in this thread / context) with ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)
