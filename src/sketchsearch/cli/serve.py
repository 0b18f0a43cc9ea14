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

__all__ = [
    "ServeOptions",
    "build_service",
    "collection_specs",
    "fit_open_files",
    "register",
    "run_server",
    "run_workers",
    "serve",
    "uvicorn_config",
]

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


#: uvicorn's default backlog (it listens again on the socket with its own, the same, when it starts serving)
BACKLOG = 2048


def _bind(host: str, port: int) -> tuple[socket.socket, str]:
    """A socket bound to ``host:port`` and listening, and the host as an URL shows it; a busy port is one clear
    error, not an address to open and then uvicorn's "[Errno 98]". Listening starts here, before the address is
    printed: a client that connects at once waits in the backlog until uvicorn (or a worker) accepts, instead
    of being refused while the server is still starting (a race seen with 2 workers on a loaded machine)."""
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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise SketchSearchError(
            f"cannot listen on {shown}:{port}: {e.strerror or e}; choose another address or --port"
        ) from e
    return sock, shown


def _announce(shown: str, sock: socket.socket, workers: int = 1) -> None:
    port = sock.getsockname()[1]
    also = f"; {workers} worker processes" if workers > 1 else ""
    print(
        f"sketchsearch: open http://{shown}:{port}/ in a browser (API docs at /docs; Ctrl+C stops{also})",
        flush=True,
    )


def _fitted(connections: ConnectionLimits | None) -> ConnectionLimits:
    from ..service.limits import ConnectionLimits

    connections = connections or ConnectionLimits()
    cap = fit_open_files(connections.max_connections)
    if cap != connections.max_connections:
        connections = dataclasses.replace(connections, max_connections=cap)
    return connections


def run_server(
    app: Any, host: str, port: int, log_level: str = "warning", connections: ConnectionLimits | None = None
) -> None:
    """Serve ``app`` with uvicorn under ``connections`` (default :class:`ConnectionLimits`), printing the
    address to open first."""
    import uvicorn

    # Bind first, then print the address; uvicorn serves on the socket it is handed.
    sock, shown = _bind(host, port)
    _announce(shown, sock)
    connections = _fitted(connections)
    uvicorn.Server(uvicorn_config(app, connections, log_level)).run(sockets=[sock])


# ----------------------------------------------------------------------------------------------- workers
@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """What one server process needs to build and run the service (picklable: handed to worker processes)."""

    specs: tuple[tuple[str, str | None, str], ...]
    limits: Any  # service.limits.Limits
    connections: Any  # service.limits.ConnectionLimits
    cors_origins: tuple[str, ...] | None = None
    decode_slots: int | None = None
    log_level: str = "warning"
    threads: int = 1
    batching: Any = None  # service.batching.BatchOptions; None: its defaults


def set_threads(n: int) -> None:
    """Intra-op threads of torch in this process: ``serve`` gives each worker its share of the CPUs (several
    workers each running torch on every core would fight over them)."""
    import torch

    torch.set_num_threads(max(1, int(n)))


def build_service(opts: ServeOptions) -> tuple[Any, list[str]]:
    """Load the collections (index codes memory-mapped: several workers share them through the page cache),
    warm them up and build the app; returns (app, one line per collection to print)."""
    from ..service.app import BatchOptions, create_app, load_collections, warm_up

    set_threads(opts.threads)
    if opts.decode_slots is not None:
        from ..service.decode import set_decode_slots

        set_decode_slots(opts.decode_slots)
    from ..pages import PageIndex

    collections = load_collections(opts.specs)
    lines = []
    for n, served in collections.items():
        r = served.retriever if isinstance(served, PageIndex) else served
        title = (r.collection or {}).get("title")
        shown = f"{n} ({title!r})" if title and title != n else n
        if isinstance(served, PageIndex):
            n = served.page_count
            size = f"{n:,} page{'' if n == 1 else 's'}, {len(r):,} boxes"
        else:
            size = f"{len(r):,} items"
        lines.append(f"collection {shown}: {size}, model {r.model_id}")
    warm_up(collections)
    app = create_app(
        collections,
        cors_origins=list(opts.cors_origins) if opts.cors_origins else None,
        limits=opts.limits,
        batching=opts.batching or BatchOptions(),
    )
    return app, lines


def _end_with_parent() -> None:
    """On Linux, have the kernel send this worker SIGTERM when the ``serve`` process that started it dies, even
    by SIGKILL (which runs none of its clean-up), so that no orphaned worker keeps serving the port."""
    import ctypes
    import ctypes.util
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(sock: socket.socket, opts: ServeOptions, conn: Any) -> None:
    """One worker process: build the service, tell the parent (``("ready", lines)`` or ``("error", message)``),
    then serve on the shared socket until SIGTERM / SIGINT."""
    import uvicorn

    _end_with_parent()
    try:
        app, lines = build_service(opts)
    except BaseException as e:  # noqa: BLE001 - reported to the parent as one line, then this process exits
        msg = str(e) if isinstance(e, (SketchSearchError, ValueError)) else f"{type(e).__name__}: {e}"
        conn.send(("error", msg))
        conn.close()
        raise SystemExit(1) from None
    conn.send(("ready", lines))
    conn.close()
    uvicorn.Server(uvicorn_config(app, opts.connections, opts.log_level)).run(sockets=[sock])


START_TIMEOUT_S = 600.0
"""How long a worker may take to load its collections (model, index checksums, warm-up) before ``serve``
gives up."""


class _Workers:
    """``n`` worker processes (spawned: each loads the model itself, and maps the index files) serving one
    listening socket; the kernel hands each new connection to one of them. A worker that dies is replaced."""

    def __init__(self, sock: socket.socket, opts: ServeOptions, n: int) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.sock, self.opts, self.n = sock, opts, n
        self.procs: list[Any] = []

    def _start(self) -> tuple[Any, Any]:
        parent, child = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(
            target=_worker_main, args=(self.sock, self.opts, child), name="sketchsearch-worker", daemon=True
        )
        p.start()
        child.close()
        return p, parent

    def _ready(self, p: Any, conn: Any) -> list[str]:
        """Wait for worker ``p`` to load; its lines, or SketchSearchError with its one-line reason."""
        import time

        deadline = time.monotonic() + START_TIMEOUT_S
        while not conn.poll(0.2):
            if not p.is_alive() and not conn.poll(0):
                raise SketchSearchError(f"a server worker exited (code {p.exitcode}) while loading the collections")
            if time.monotonic() > deadline:
                raise SketchSearchError(f"a server worker did not load the collections in {START_TIMEOUT_S:.0f} s")
        try:
            kind, payload = conn.recv()
        except EOFError:
            p.join(5)
            raise SketchSearchError(
                f"a server worker exited (code {p.exitcode}) while loading the collections"
            ) from None
        finally:
            conn.close()
        if kind == "error":
            raise SketchSearchError(payload)
        return list(payload)

    def start(self) -> list[str]:
        started = [self._start() for _ in range(self.n)]
        self.procs = [p for p, _ in started]
        lines: list[str] = []
        for p, conn in started:
            lines = self._ready(p, conn)
        return lines

    def supervise(self) -> None:
        """Until interrupted: replace any worker that exits."""
        while True:
            for i, p in enumerate(self.procs):
                p.join(0.5 / max(1, len(self.procs)))
                if p.exitcode is not None:
                    console.print(
                        f"[yellow]warning:[/] server worker {p.pid} exited (code {p.exitcode}); starting another",
                        highlight=False,
                    )
                    q, conn = self._start()
                    self.procs[i] = q
                    self._ready(q, conn)

    def stop(self) -> None:
        for p in self.procs:
            if p.exitcode is None:
                p.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits
        for p in self.procs:
            p.join(10)
            if p.exitcode is None:
                p.kill()
                p.join(5)


def run_workers(opts: ServeOptions, host: str, port: int, workers: int) -> None:
    """Serve with ``workers`` processes on one socket, printing the address once every worker is ready."""
    import signal

    sock, shown = _bind(host, port)
    opts = dataclasses.replace(opts, connections=_fitted(opts.connections))  # the children inherit the limit
    pool = _Workers(sock, opts, workers)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        lines = pool.start()
        for line in lines:
            console.print(line, highlight=False, markup=False)
        _announce(shown, sock, workers)
        pool.supervise()
    except KeyboardInterrupt:
        pass
    finally:
        pool.stop()
        sock.close()
        signal.signal(signal.SIGTERM, previous)


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
    workers: int = typer.Option(
        1,
        min=1,
        max=64,
        help="Server processes on the one port: each loads the model and maps the index files (shared through "
        "the page cache, not copied); torch gets cores / workers threads in each.",
    ),
    batch_max: int = typer.Option(
        32,
        min=1,
        max=1024,
        help="Most searches of a collection encoded and scanned together (one forward pass of the model, one "
        "scan of the index); 1: each search alone. Per worker process.",
    ),
    batch_wait_ms: float = typer.Option(
        0.0,
        min=0.0,
        max=1000.0,
        help="Milliseconds a batch waits for more searches after its first arrived (0: takes what is queued).",
    ),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
) -> None:
    """Serve the drawing page and the REST API (POST /api/search, GET /api/collections, /docs)."""
    import os

    from ..service.batching import BatchOptions
    from ..service.limits import ConnectionLimits, Limits
    from ..service.state import check_name

    specs = collection_specs(index, model, name)
    for n, _, _ in specs:
        try:
            check_name(n)
        except ValueError as e:  # a collection name that cannot be served
            raise typer.BadParameter(str(e)) from None
    opts = ServeOptions(
        specs=tuple((n, m, str(p)) for n, m, p in specs),
        limits=Limits(max_k=max_k, max_body_bytes=max(1, int(max_body_mb * 1024 * 1024))),
        connections=ConnectionLimits(
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            keep_alive_timeout=keep_alive,
            max_connections=max_connections,
        ),
        cors_origins=tuple(cors_origin) if cors_origin else None,
        decode_slots=decode_slots,
        log_level=log_level,
        threads=max(1, (os.cpu_count() or 1) // workers),
        batching=BatchOptions(max_batch=batch_max, max_wait_ms=batch_wait_ms),
    )
    if workers > 1:
        run_workers(opts, host, port, workers)
        return
    app, lines = build_service(opts)
    for line in lines:
        console.print(line, highlight=False, markup=False)
    run_server(app, host, port, log_level, opts.connections)


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""
    app.command("serve")(serve)
