"""The Typer application object and the helpers every command module shares.

Command modules register themselves on these apps; ``sketchsearch.cli`` imports them explicitly.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from ..errors import SketchSearchError

app = typer.Typer(
    name="sketchsearch",
    help="Search collections by drawing: train methods, build indexes, search, evaluate, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect, read and download sketch data.", no_args_is_help=True)
index_app = typer.Typer(help="Build and inspect on-disk indexes.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn the library's typed errors into a one-line message and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SketchSearchError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
            raise typer.Exit(2) from None
        except FileNotFoundError as e:
            console.print(f"[bold red]error:[/] no such file: {e.filename}", highlight=False)
            raise typer.Exit(2) from None
        except (ValueError, TypeError) as e:
            # Bad parameters reach the library as ValueError/TypeError (e.g. too few items for 64 bits,
            # an unknown name: the message lists the valid ones); a user sees the message, not a traceback.
            console.print(f"[bold red]error:[/] {e}", highlight=False, markup=False)
            raise typer.Exit(2) from None

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


def command_line(ctx: typer.Context) -> str:
    """The running command as a canonical, re-runnable line (recorded on model cards and results):
    rebuilt from the parsed parameters, so it is the same whether the CLI ran from a shell or in-process."""
    import shlex

    root = ctx.find_root().info_name or ""
    words = ["sketchsearch", *ctx.command_path[len(root) :].split()]
    for p in ctx.command.params:
        value = ctx.params.get(p.name or "")
        if value is None or value == p.default or (isinstance(value, (list, tuple)) and not value):
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
