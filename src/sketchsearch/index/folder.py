"""Index folders on disk: one writer at a time, atomic swaps, permissions, leftovers of dead writers.

**One writer at a time.** :func:`write_lock` holds an advisory lock (``flock``) on the file ``.<name>.lock``
beside the folder for the whole of a change: load, allocate ids, write, swap. A second writer *waits* for
it (polling, up to ``timeout`` seconds: by default :data:`DEFAULT_LOCK_TIMEOUT`, or the environment's
``SKETCHSEARCH_LOCK_TIMEOUT``), then fails with one line naming the folder and the lock file. The lock
is re-entrant within a thread (``save_index`` takes it too, so a save inside a held lock does not wait for
itself) and goes with the process: a killed writer holds nothing.

**Readers never see a half swap.** :func:`swap_in` puts a finished folder in place with one atomic
``renameat2(RENAME_EXCHANGE)`` where the system has it (Linux), so the folder's path always names a
complete generation; elsewhere it falls back to two renames (a reader retries, see ``store.load_index``).

**Leftovers.** A writer killed mid-save leaves ``.<name>.tmp-*`` (a half-written folder, or the previous
generation it was deleting); one killed between the two fallback renames leaves ``.<name>.old-*``. The
next writer removes them as it takes the lock: holding the lock proves that no other writer is alive,
and only those older than the lock's acquisition are touched (``.old-*`` only while the folder exists,
since it is the only copy otherwise).

**Permissions.** A new folder follows the umask (``tempfile.mkdtemp`` makes 0700; it is opened up to
``0o777 & ~umask``, its files ``0o666 & ~umask``); a replaced folder keeps the modes of the one it
replaces, so a ``chmod`` sticks.

**Paths.** A symlink given as the folder is followed: its target is written, the link stays
(:func:`target`). A path that is not valid UTF-8 is refused before anything is done
(:func:`check_path`): the item store (SQLite) cannot be opened at such a path.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import shutil
import stat
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sketchsearch.errors import IndexError_

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "LOCK_TIMEOUT_ENV",
    "check_path",
    "lock_path",
    "lock_timeout",
    "os_reason",
    "swap_in",
    "target",
    "write_lock",
]

#: seconds a writer waits for another one to finish before giving up (``SKETCHSEARCH_LOCK_TIMEOUT`` overrides)
DEFAULT_LOCK_TIMEOUT = 300.0
LOCK_TIMEOUT_ENV = "SKETCHSEARCH_LOCK_TIMEOUT"
MANIFEST = "manifest.json"

_held = threading.local()  # .locks: absolute lock path -> depth, for the locks this thread holds
_umask_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------- paths
def target(folder: str | Path) -> Path:
    """The folder a path names: a symlink's target (followed, so the target is updated and the link stays),
    else the path itself."""
    folder = Path(folder)
    return Path(os.path.realpath(folder)) if folder.is_symlink() else folder


def check_path(folder: str | Path) -> None:
    """IndexError_ for a path that is not valid UTF-8 (named with its bytes), before any work is done."""
    try:
        os.fspath(Path(folder).absolute()).encode("utf-8")
    except UnicodeEncodeError:
        raise IndexError_(
            f"{os.fsencode(folder)!r}: the path is not valid UTF-8; an index folder needs a UTF-8 path "
            "(its item store is SQLite): rename the folder or choose another one"
        ) from None


def lock_path(folder: Path) -> Path:
    """The lock file of the index folder ``folder``: ``.<name>.lock`` beside it."""
    return folder.parent / f".{folder.name}.lock"


def os_reason(e: OSError) -> str:
    """``OSError`` as ``<file>: <what>`` with a hint for a full disk or a folder one may not write in."""
    what = e.strerror or (str(e.args[0]) if e.args else type(e).__name__)
    if e.errno == errno.ENOSPC:
        what += " (the disk is full: free some space)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what += " (no permission to write there: choose a folder you can write to)"
    return f"{e.filename}: {what}" if e.filename else what


def umask() -> int:
    """The process's umask (read without changing it where /proc says it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------- lock
def lock_timeout(timeout: float | None = None) -> float:
    """``timeout``, else ``SKETCHSEARCH_LOCK_TIMEOUT``, else :data:`DEFAULT_LOCK_TIMEOUT` (seconds, >= 0)."""
    if timeout is None:
        raw = os.environ.get(LOCK_TIMEOUT_ENV)
        if raw is None or not raw.strip():
            return DEFAULT_LOCK_TIMEOUT
        try:
            timeout = float(raw)
        except ValueError:
            raise IndexError_(f"{LOCK_TIMEOUT_ENV}={raw!r}: expected a number of seconds >= 0") from None
    if not timeout >= 0:
        raise IndexError_(f"lock timeout: expected a number of seconds >= 0, got {timeout!r}")
    return float(timeout)


def _try_lock(fd: int) -> bool:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def write_lock(folder: str | Path, timeout: float | None = None) -> Iterator[Path]:
    """Hold the write lock of the index folder ``folder`` for the block; yields the folder written (a
    symlink's target). Waits up to ``timeout`` seconds (:func:`lock_timeout`) for another writer, then
    IndexError_ naming the folder and the lock file. Re-entrant within a thread. On taking the lock,
    removes what dead writers left (see the module docstring)."""
    folder = target(folder)
    check_path(folder)
    lock = lock_path(folder)
    key = os.path.abspath(lock)
    held: dict[str, int] = _held.__dict__.setdefault("locks", {})
    if key in held:
        held[key] += 1
        try:
            yield folder
        finally:
            held[key] -= 1
        return
    wait = lock_timeout(timeout)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a+b")  # noqa: SIM115 - closed by the with below (it holds the lock)
    except OSError as e:
        raise IndexError_(f"{folder}: cannot take the write lock: {os_reason(e)}") from None
    with f:
        deadline, pause = time.monotonic() + wait, 0.005
        while not _try_lock(f.fileno()):
            left = deadline - time.monotonic()
            if left <= 0:
                raise IndexError_(
                    f"{folder}: another command is changing this index (it holds {lock}) and did not finish "
                    f"within {wait:g} s; run again when it has finished, or wait longer ({LOCK_TIMEOUT_ENV} "
                    "or --lock-timeout)"
                )
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.1)
        held[key] = 1
        try:
            clean_leftovers(folder, before=time.time())
            yield folder
        finally:
            del held[key]
    # the lock goes with the file's closing


def clean_leftovers(folder: Path, before: float) -> list[Path]:
    """Remove the ``.<name>.tmp-*`` folders (and, while ``folder`` holds an index, the ``.<name>.old-*``
    ones) last changed before ``before``; only call it holding the folder's write lock. Returns them."""
    name = glob.escape(folder.name)
    found = list(folder.parent.glob(f".{name}.tmp-*"))
    if (folder / MANIFEST).is_file():
        found += folder.parent.glob(f".{name}.old-*")
    gone = []
    for p in found:
        try:
            st = p.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_mtime < before:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


# ---------------------------------------------------------------------------------------------- swap
def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange the paths ``a`` and ``b`` (Linux ``renameat2``); False where not supported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28)
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or file system without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def set_modes(tmp: Path, like: Path | None) -> None:
    """Give the new folder ``tmp`` the modes of the folder ``like`` it replaces (folder and files of the same
    names), or, when there is none, the umask's (``tempfile.mkdtemp`` made it 0700)."""
    if like is not None and like.is_dir():
        os.chmod(tmp, stat.S_IMODE(like.stat().st_mode))
        for p in tmp.iterdir():
            old = like / p.name
            if old.is_file():
                os.chmod(p, stat.S_IMODE(old.stat().st_mode))
        return
    mask = umask()
    os.chmod(tmp, 0o777 & ~mask)
    for p in tmp.iterdir():  # SQLite creates its file 0644 & ~umask, whatever the umask allows
        os.chmod(p, 0o666 & ~mask)


def swap_in(tmp: Path, folder: Path) -> None:
    """Put the finished folder ``tmp`` at ``folder`` (replacing an index there): one atomic exchange where
    the system has it (readers see the old folder or the new, never none), else two renames; the old
    generation is then deleted. Hold the folder's write lock."""
    if not folder.exists():
        os.rename(tmp, folder)
    elif _exchange(tmp, folder):  # tmp now holds the old generation
        _fsync_dir(folder.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    else:
        old = folder.parent / f".{folder.name}.old-{os.urandom(4).hex()}"
        os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except BaseException:
            os.rename(old, folder)
            raise
        _fsync_dir(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    _fsync_dir(folder.parent)
