"""`sketchsearch data download quickdraw`: fetch QuickDraw's full per-class files (resumable, verified)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import console, friendly_errors, print_json


def register(data_app: typer.Typer) -> None:
    """Add the ``download`` group (``download quickdraw``) to the ``data`` app."""
    download_app = typer.Typer(help="Download public sketch datasets (needs network access).", no_args_is_help=True)
    data_app.add_typer(download_app, name="download")

    @download_app.command("quickdraw")
    @friendly_errors
    def quickdraw(
        classes: list[str] = typer.Option(
            ..., "--classes", "-c", help="class names; repeat or comma-separate ('cat,The Eiffel Tower')"
        ),
        out: Path = typer.Option(Path("data/quickdraw"), "--out", "-o", help="folder for <class>.ndjson"),
        kind: str = typer.Option("raw", help="raw (with timing) or simplified (RDP, 0-255 box)"),
        base_url: str = typer.Option(None, help="mirror of https://storage.googleapis.com/quickdraw_dataset/full"),
        retries: int = typer.Option(3, help="retries (each resumes with a Range request)"),
        overwrite: bool = typer.Option(False, help="download again even when the file is present"),
        no_check: bool = typer.Option(False, "--no-check", help="skip the per-line ndjson check (huge files)"),
        as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
    ) -> None:
        """Download per-class QuickDraw ndjson files; rerun to resume an interrupted download."""
        from ..data.download import QUICKDRAW_BASE_URL, download_quickdraw

        names = [c.strip() for v in classes for c in v.split(",") if c.strip()]
        last: dict[str, int] = {}

        def progress(name: str, done: int, total: int | None) -> None:
            mb = done >> 20
            if not as_json and last.get(name) != mb and mb % 16 == 0:
                last[name] = mb
                console.print(f"{name}: {mb} MB" + (f" / {total >> 20} MB" if total else ""), highlight=False)

        res = download_quickdraw(
            names,
            out,
            kind=kind,
            base_url=base_url or QUICKDRAW_BASE_URL,  # type: ignore[arg-type]
            check_lines=not no_check,
            overwrite=overwrite,
            retries=retries,
            progress=progress,
        )
        rows = [
            {
                "class": r.name,
                "path": str(r.path),
                "bytes": r.bytes,
                "status": r.status,
                "records": r.lines,
                "sha256": r.sha256,
                "seconds": round(r.seconds, 2),
            }
            for r in res
        ]
        if as_json:
            print_json(rows)
        else:
            for r in rows:
                console.print(
                    f"{r['class']}: {r['status']} {r['bytes']} bytes, {r['records']} records -> {r['path']}",
                    highlight=False,
                )
