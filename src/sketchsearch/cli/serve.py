"""``sketchsearch serve``: the drawing page and the REST API over one or more collections."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ..errors import SketchSearchError
from .app import console, friendly_errors

if TYPE_CHECKING:  # the service (FastAPI, uvicorn) is imported only when a server starts
    from ..service.limits import ConnectionLimits

__all__ = ["collection_specs", "fit_open_files", "register", "run_server", "serve", "uvicorn_config"]

RESERVED_FILES = 128
"""Descriptors kept for everything but admitted client sockets: index files, SQLite, logs, and up to
``ConnectionLimits.backlog`` (64) sockets accepted in one burst before the cap is applied to them. The
connection cap is the open-file limit less these."""


def collection_specs(
    indexes: list[Path], models: list[str] | None, names: list[str] | None
) -> list[tuple[str, str | None, Path]]:
    """Pair ``--index`` folders with ``--model`` and ``--name`` options, in the order given.

    No ``--model``: each index's own model (named in its manifest). One: used for every index. Otherwise one
    per index. A collection's name (its id in URLs) defaults to its manifest's ``slug`` (made by
    ``index build`` from ``--name``), else to the index folder's name.
    """
    models = list(models or [])
    names = list(names or [])
    if len(models) not in (0, 1, len(indexes)):
        raise typer.BadParameter(
            f"{len(models)} --model for {len(indexes)} --index: "
            "give none (each index's own model), one, or one per index"
        )
    if names and len(names) != len(indexes):
        raise typer.BadParameter(f"{len(names)} --name for {len(indexes)} --index: give one name per index, or none")
    per_index: list[str | None] = models * len(indexes) if len(models) == 1 else (models or [None] * len(indexes))  # type: ignore[list-item]
    chosen = names or [_default_name(Path(p)) for p in indexes]
    dupes = sorted({n for n in chosen if chosen.count(n) > 1})
    if dupes:
        raise typer.BadParameter(
            f"collection names {dupes} repeat: give each --index a --name, or build them with different "
            "`index build --name`"
        )
    return [(n, m, Path(p)) for n, m, p in zip(chosen, per_index, indexes)]


def _default_name(folder: Path) -> str:
    """The ``slug`` of the index at ``folder`` (from its manifest), else the folder's name; a folder that is
    not a readable index is named by its folder here, and loading it says why."""
    from ..errors import IndexError_
    from ..index.store import read_manifest

    try:
        slug = read_manifest(folder).get("slug")
    except IndexError_:
        slug = None
    return slug if isinstance(slug, str) and slug else folder.resolve().name or "collection"


def fit_open_files(max_connections: int) -> int:
    """Raise this process's open-file limit to fit ``max_connections`` sockets plus :data:`RESERVED_FILES`
    (up to the hard limit), and return the cap that fits: ``max_connections``, or less (with a warning) where
    the hard limit is lower. A server past its limit cannot accept, and logs it on every retry."""
    try:
        import resource
    except ImportError:  # not POSIX
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= want:
        return max_connections
    fits = max(1, soft - RESERVED_FILES)
    console.print(
        f"[yellow]warning:[/] --max-connections {max_connections} lowered to {fits}: the open-file limit is {soft} "
        f"(raise it with `ulimit -n`)",
        highlight=False,
    )
    return fits


def uvicorn_config(app: Any, connections: ConnectionLimits | None = None, log_level: str = "warning") -> Any:
    """The ``uvicorn.Config`` the service runs under: ``connections``' timeouts and cap (through
    :class:`~sketchsearch.service.limits.GuardedH11Protocol`), no ``Server`` header, and repeated
    out-of-descriptor accept errors logged once per 10 s."""
    import uvicorn

    from ..service.limits import ConnectionLimits, install_log_filters

    config = uvicorn.Config(
        app, log_level=log_level, server_header=False, **(connections or ConnectionLimits()).uvicorn_options()
    )
    install_log_filters()  # after Config: it configures uvicorn's loggers
    return config


def run_server(
    app: Any, host: str, port: int, log_level: str = "warning", connections: ConnectionLimits | None = None
) -> None:
    """Serve ``app`` with uvicorn under ``connections`` (default :class:`ConnectionLimits`), printing the
    address to open first."""
    import uvicorn

    from ..service.limits import ConnectionLimits

    shown = f"[{host}]" if ":" in host else host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        console.print(
            f"[yellow]warning:[/] listening on {host}: reachable from other machines, with no authentication",
            highlight=False,
        )
    # Bind first, then print the address: a busy port is one clear error, not an address to open and then
    # uvicorn's "[Errno 98]". uvicorn serves on the socket it is handed.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SketchSearchError(
            f"cannot listen on {shown}:{port}: {e.strerror or e}; choose another address or --port"
        ) from e
    port = sock.getsockname()[1]
    print(
        f"sketchsearch: open http://{shown}:{port}/ in a browser (API docs at /docs; Ctrl+C stops)",
        flush=True,
    )
    connections = connections or ConnectionLimits()
    cap = fit_open_files(connections.max_connections)
    if cap != connections.max_connections:
        connections = dataclasses.replace(connections, max_connections=cap)
    uvicorn.Server(uvicorn_config(app, connections, log_level)).run(sockets=[sock])


@friendly_errors
def serve(
    index: list[Path] = typer.Option(..., "--index", help="Index folder; repeat to serve several collections."),
    model: list[str] | None = typer.Option(
        None,
        "--model",
        help="Model name or path for the indexes (one for all, or one per --index); default: each index's own.",
    ),
    name: list[str] | None = typer.Option(
        None,
        "--name",
        help="Collection id in URLs per --index: letters, digits, '_', '.', '-' (default: the id `index build` "
        "derived from its --name, else the folder's name).",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind: loopback by default."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port."),
    cors_origin: list[str] | None = typer.Option(
        None,
        "--cors-origin",
        help="Allow API calls from pages on this origin (repeatable); CORS is off without it.",
    ),
    max_k: int = typer.Option(200, min=1, help="Most hits one search may ask for."),
    max_body_mb: float = typer.Option(
        4.0,
        min=0.001,
        help="Largest request body in MB (an image upload; a JSON search: at most 1 MiB), refused with 413 as it "
        "streams in.",
    ),
    header_timeout: float = typer.Option(
        10.0, min=0.01, help="Seconds a client has to send a request's head; then 408 and the socket is closed."
    ),
    body_timeout: float = typer.Option(
        60.0, min=0.01, help="Seconds a client has to send a request's body after its head; then 408 and closed."
    ),
    keep_alive: float = typer.Option(5.0, min=0.01, help="Seconds an idle keep-alive connection is kept open."),
    max_connections: int = typer.Option(
        1000,
        min=1,
        help="Sockets open at once; at the cap the longest-idle one is closed for a new client (503 if none is "
        "idle). Lowered to fit the open-file limit.",
    ),
    decode_slots: int | None = typer.Option(
        None,
        min=1,
        help="Uploaded images decoded at once (each holds up to 64 MiB while it decodes; others wait up to 30 s, "
        "then 503). Default: $SKETCHSEARCH_DECODE_SLOTS, else 2.",
        show_default=False,
    ),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
) -> None:
    """Serve the drawing page and the REST API (POST /api/search, GET /api/collections, /docs)."""
    from ..service.app import Limits, create_app, load_collections, warm_up
    from ..service.limits import ConnectionLimits

    if decode_slots is not None:
        from ..service.decode import set_decode_slots

        set_decode_slots(decode_slots)
    specs = collection_specs(index, model, name)
    try:
        collections = load_collections(specs)
    except ValueError as e:  # a collection name that cannot be served
        raise typer.BadParameter(str(e)) from None
    for n, r in collections.items():
        title = (r.collection or {}).get("title")
        shown = f"{n} ({title!r})" if title and title != n else n
        console.print(f"collection {shown}: {len(r):,} items, model {r.model_id}", highlight=False, markup=False)
    warm_up(collections)
    limits = Limits(max_k=max_k, max_body_bytes=max(1, int(max_body_mb * 1024 * 1024)))
    app = create_app(collections, cors_origins=cors_origin or None, limits=limits)
    connections = ConnectionLimits(
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keep_alive_timeout=keep_alive,
        max_connections=max_connections,
    )
    run_server(app, host, port, log_level, connections)


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""
    app.command("serve")(serve)
