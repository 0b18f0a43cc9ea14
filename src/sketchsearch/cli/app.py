"""The Typer application object and the helpers every command module shares.

Command modules register themselves on these apps; ``sketchsearch.cli`` imports them explicitly.

Output conventions (every command):

* **Results on stdout, everything else on stderr.** Tables, ``--json`` documents and "saved X" lines are
  results; progress, notes, warnings and errors go to stderr, so ``sketchsearch models | grep gan`` and
  ``sketchsearch evaluate ... --json | jq`` see only results. ``--json`` prints one JSON document and
  nothing else on stdout.
* **Tables** (:func:`print_table`): on a terminal, a rich table as wide as the terminal whose cells wrap and
  are never cut; piped or redirected, plain tab-separated values (a header line, then a line per row, every
  cell whole; the title goes to stderr), for ``grep``, ``cut`` and spreadsheets.
* **Errors** (:func:`friendly_errors`, :class:`PlainErrorsGroup`): one plain line ``error: ...`` on stderr
  (no markup, no traceback, no usage box) naming the option, file or key and the valid choices; exit code 2.
* **Progress** (:class:`Reporter`): long commands show live bars and spinners on stderr when stderr is a
  terminal, and a line per finished step; nothing when stderr is not a terminal (logs, CI, pipes) or with
  ``--quiet`` / ``-q``.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from ..errors import SketchSearchError

#: click's base class of command-line errors, in the click typer uses (recent typers carry their own copy)
ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class PlainErrorsGroup(TyperGroup):
    """The root command: a command-line error (unknown option, missing value, bad choice) is one plain line
    on stderr that names the option and points to ``--help``, not a usage text in a box."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as e:
            code: int = getattr(e, "exit_code", 1)
            if type(e).__name__ == "NoArgsIsHelpError":  # `sketchsearch data`: the help was shown
                sys.exit(code)
            ours = isinstance(e, typer.BadParameter) and e.param is None and e.param_hint is None
            # ours: a command's own words; click's: with the option's name
            message = e.message if ours else e.format_message()  # type: ignore[attr-defined]
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None and not ours else ""
            print_error(message + hint)
            sys.exit(code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="sketchsearch",
    help="Search collections by drawing: train methods, build indexes, search, evaluate, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=PlainErrorsGroup,
)
data_app = typer.Typer(help="Inspect, read and download sketch data.", no_args_is_help=True)
index_app = typer.Typer(help="Build and inspect on-disk indexes.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")

#: diagnostics and progress (stderr)
console = Console(stderr=True)
#: results: tables on a terminal (stdout; see print_table)
stdout_console = Console()
F = TypeVar("F", bound=Callable[..., Any])

#: ``--quiet`` of the commands that show progress
QUIET = typer.Option(False, "--quiet", "-q", help="Show no progress on stderr (results and errors only).")


def print_error(message: str) -> None:
    """``error: MESSAGE`` as one plain line on stderr (line breaks in the message become spaces)."""
    sys.stderr.write("error: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()


def friendly_errors(fn: F) -> F:
    """Turn the library's typed errors into a one-line message and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SketchSearchError as e:
            print_error(str(e))
        except FileNotFoundError as e:
            print_error(f"no such file: {e.filename}")
        except (ValueError, TypeError) as e:
            # Bad parameters reach the library as ValueError/TypeError (e.g. too few items for 64 bits,
            # an unknown name: the message lists the valid ones); a user sees the message, not a traceback.
            print_error(str(e))
        raise typer.Exit(2)

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "") -> None:
    """A result table on stdout: on a terminal a rich table as wide as the terminal (long cells wrap, none
    is cut); otherwise tab-separated values, the header then one line per row, each cell whole (tabs and
    line breaks in a cell become spaces), with the title on stderr."""
    if stdout_console.is_terminal:
        t = Table(title=title or None)
        for c in columns:
            t.add_column(c, overflow="fold")
        for row in rows:
            t.add_row(*(escape(str(v)) for v in row))
        stdout_console.print(t)
        return
    if title:
        console.print(title, highlight=False, markup=False, soft_wrap=True)

    def cell(v: Any) -> str:
        return str(v).replace("\t", " ").replace("\r", " ").replace("\n", " ")

    sys.stdout.write("".join("\t".join(cell(v) for v in line) + "\n" for line in [columns, *rows]))


class Reporter:
    """A command's progress on stderr: live bars and spinners when stderr is a terminal and not ``quiet``,
    else nothing. One live display for the command; a finished step leaves one line (its name and time).

    :meth:`phase` is a :data:`sketchsearch.progress.PhaseReporter` (install it with
    ``report_phases(reporter.phase)`` to show the library's steps); :meth:`steps` drives bars from a
    ``(what, done, total)`` callback (the evaluation's); :meth:`note` prints a line above the display."""

    def __init__(self, quiet: bool = False) -> None:
        self.enabled = not quiet and console.is_terminal
        self._live: Progress | None = None

    def _display(self) -> Progress:
        if self._live is None:
            self._live = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
        if not self._live.live.is_started:
            self._live.start()
        return self._live

    def _drop(self, task: TaskID) -> None:
        assert self._live is not None
        self._live.remove_task(task)
        if not self._live.tasks:
            self._live.stop()

    @contextmanager
    def phase(self, name: str, live: bool = True) -> Iterator[None]:
        """Show ``name`` with a spinner and its elapsed time while the block runs; then ``name: N s``.
        ``live=False``: the block draws its own live display, so this one pauses meanwhile."""
        if not self.enabled:
            yield
            return
        if not live:
            paused = self._live if self._live is not None and self._live.live.is_started else None
            if paused:
                paused.stop()
            try:
                yield
            finally:
                if paused:
                    paused.start()
            return
        t0 = time.perf_counter()
        task = self._display().add_task(escape(name), total=None, counts="")
        try:
            yield
        finally:
            self._drop(task)
        self.note(f"{name}: {time.perf_counter() - t0:.1f} s")

    @contextmanager
    def steps(self) -> Iterator[Callable[[str, int, int], None]]:
        """Yield ``update(what, done, total)``: a bar for ``what`` (a new ``what`` replaces the bar)."""
        shown: dict[str, Any] = {}

        def update(what: str, done: int, total: int) -> None:
            if not self.enabled:
                return
            if shown.get("what") != what:
                if "task" in shown:
                    self._drop(shown["task"])
                shown.update(what=what, task=self._display().add_task(escape(what), total=total, counts=""))
            assert self._live is not None
            self._live.update(shown["task"], completed=done, total=total, counts=f"{done}/{total}")

        try:
            yield update
        finally:
            if "task" in shown:
                self._drop(shown["task"])

    def note(self, text: str) -> None:
        """A progress line (e.g. a finished row), above the live display; shown only when progress is."""
        if self.enabled:
            console.print(text, highlight=False, markup=False, soft_wrap=True)


def parse_sets(values: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs -> kwargs; values parsed as JSON when they can be (numbers, true, lists)."""
    out: dict[str, Any] = {}
    for v in values or []:
        if "=" not in v:
            raise typer.BadParameter(f"--set expects key=value, got {v!r}")
        k, _, raw = v.partition("=")
        try:
            out[k.strip().replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = raw
    return out


#: options that change what is shown, not what is computed: left out of the recorded command line
DISPLAY_OPTIONS = frozenset({"quiet"})


def command_line(ctx: typer.Context) -> str:
    """The running command as a canonical, re-runnable line (recorded on model cards and results):
    rebuilt from the parsed parameters, so it is the same whether the CLI ran from a shell or in-process."""
    import shlex

    root = ctx.find_root().info_name or ""
    words = ["sketchsearch", *ctx.command_path[len(root) :].split()]
    for p in ctx.command.params:
        value = ctx.params.get(p.name or "")
        if p.name in DISPLAY_OPTIONS or value is None or value == p.default:
            continue
        if isinstance(value, (list, tuple)) and not value:
            continue
        if p.param_type_name == "argument":
            words.append(str(value))
            continue
        opt = max(p.opts, key=len)
        if getattr(p, "is_flag", False):
            words.append(opt if value else (p.secondary_opts[0] if p.secondary_opts else ""))
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            words += [opt, str(v)]
    return " ".join(shlex.quote(w) for w in words if w)
