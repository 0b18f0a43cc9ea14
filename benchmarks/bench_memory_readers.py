"""Peak memory of hostile inputs: what ``sketchsearch data info`` costs on a zip-bomb ``.npz``, a
compressed-bomb ``.mat`` and a 250 MB ndjson line, and what the one image decoder costs on a 4000 x 4000
16-bit RGBA PNG (124 KB on disk), each with the limit that stopped it.

    python benchmarks/bench_memory_readers.py [--line-mb 250] [--bomb-gb 3.2] [--out benchmarks/results/memory_readers]

Every input is generated in a temporary folder by streaming writers (the zip member and the zlib stream are
written a chunk at a time), so the benchmark itself needs a few MB, not GBs. Each case runs in a child
process; its peak RSS is that child's ``ru_maxrss`` (``os.wait4``), its message the first line of what it
printed. The baseline row is ``data info`` on a one-line ndjson file (the CLI's imports alone); the decode
rows give the child's peak before the decode (``rss_before_mb``: its imports and the file's bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy.lib.format as npformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine_info, table_markdown, write_results

CHUNK = 16 * 1024 * 1024


# ---------------------------------------------------------------------------------------------- generators
def write_npz_bomb(path: Path, n_images: int) -> None:
    """A QuickDraw bitmap ``.npz``: ``images`` uint8 (n, 784) of zeros and ``labels`` uint8 (n,), each member
    deflated as it is written (the archive is ~1/1000 of what it declares)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, shape in (("images", (n_images, 784)), ("labels", (n_images,))):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                npformat.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
                left = 1
                for d in shape:
                    left *= d
                zeros = bytes(CHUNK)
                while left:
                    n = min(left, CHUNK)
                    f.write(zeros[:n])
                    left -= n


def _pad8(b: bytes) -> bytes:
    return b + bytes(-len(b) % 8)


def write_mat_bomb(
    path: Path, shape: tuple[int, ...], name: str = "data", declared: tuple[int, ...] | None = None
) -> None:
    """A MATLAB v5 ``.mat`` (what QMUL's files are) with one compressed uint8 variable of zeros of ``shape``,
    compressed as it is written; ``scipy.io.loadmat`` reads it (checked on small shapes). ``declared``: the
    dims its header claims instead (a header that lies, so only counting the inflated bytes catches it)."""
    dims_out = declared or shape
    n = 1
    for d in shape:
        n *= d
    if n + 256 >= 2**32:
        raise ValueError("a v5 .mat element holds < 4 GiB")
    flags = struct.pack("<II", 6, 8) + struct.pack("<II", 9, 0)  # miUINT32: mxUINT8_CLASS
    dims = struct.pack("<II", 5, 4 * len(dims_out)) + _pad8(struct.pack(f"<{len(dims_out)}i", *dims_out))
    nm = struct.pack("<II", 1, len(name)) + _pad8(name.encode())
    data_tag = struct.pack("<II", 2, n)  # miUINT8
    body = len(flags) + len(dims) + len(nm) + len(data_tag) + n + (-n % 8)
    head = b"MATLAB 5.0 MAT-file, written by sketchsearch benchmarks/bench_memory_readers.py".ljust(116, b" ")
    head += bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    with open(path, "wb") as f:
        f.write(head)
        f.write(struct.pack("<II", 15, 0))  # miCOMPRESSED, size patched below
        start = f.tell()
        z = zlib.compressobj(9)
        f.write(z.compress(struct.pack("<II", 14, body) + flags + dims + nm + data_tag))
        left = n + (-n % 8)
        zeros = bytes(CHUNK)
        while left:
            k = min(left, CHUNK)
            f.write(z.compress(zeros[:k]))
            left -= k
        f.write(z.flush())
        end = f.tell()
        f.seek(start - 4)
        f.write(struct.pack("<I", end - start))


def write_long_line(path: Path, mb: int) -> None:
    """An ndjson file whose one line is a QuickDraw record of ``mb`` MB (one stroke of ~``mb``/4 M points)."""
    n = mb * 1024 * 1024 // 8  # "1,2," is 4 bytes a point, and x and y each get n points
    piece = "1,2," * (CHUNK // 4)
    with open(path, "w") as f:
        f.write('{"word": "cat", "drawing": [[[')
        for xs in range(2):
            left = n
            while left > 0:
                k = min(left, CHUNK // 4)
                f.write(piece[: 4 * k])
                left -= k
            f.write("0]" if xs else "0], [")
        f.write("]]}\n")


def write_png16(path: Path, side: int = 4000) -> None:
    """A ``side`` x ``side`` RGBA PNG with 16 bits a channel (mostly transparent, a dark diagonal band),
    compressed row by row: ~0.1 MB on disk, 8 bytes a pixel to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    parts = []
    for y in range(side):
        row = bytearray(side * 8)
        x0 = max(0, y - 20)
        row[x0 * 8 : min(side, y + 20) * 8] = b"\x00\x00\x00\x00\x00\x00\xff\xff" * (min(side, y + 20) - x0)
        parts.append(z.compress(b"\x00" + bytes(row)))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------- measuring
def run_child(argv: list[str], cwd: Path) -> dict[str, Any]:
    """Run ``argv``; its exit code, wall time, peak RSS (MB, ``ru_maxrss`` of that child) and output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "exit": p.returncode,
            "wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def data_info(path: Path, cwd: Path) -> dict[str, Any]:
    """``sketchsearch data info PATH --json`` in a child; the message is the first skipped record's reason
    (the limit that stopped it) or the first line of the error."""
    r = run_child([sys.executable, "-m", "sketchsearch", "data", "info", str(path), "--json"], cwd)
    try:
        info = json.loads(r["stdout"])
        errs = info.get("errors") or []
        r["items"], r["skipped"] = info["items"], info["skipped"]
        r["message"] = f"{errs[0]['file']}: record {errs[0]['record']}: {errs[0]['reason']}" if errs else "(none)"
    except (ValueError, KeyError):
        r["message"] = (r["stderr"].strip().splitlines() or ["(no output)"])[-1]
    return r


DECODE = """
import sys, time
from pathlib import Path

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

which, path = sys.argv[1], Path(sys.argv[2])
import io, threading
from PIL import Image, ImageOps
from starlette.exceptions import HTTPException
from sketchsearch.data.formats.images import open_image
from sketchsearch.service import decode
from sketchsearch.service.decode import read_image
from sketchsearch.service.limits import Limits
data = path.read_bytes()
print(f"before {rss_mb():.1f}")
t0 = time.perf_counter()
if which == "open_image":
    arr = open_image(path)
    print("decoded to", arr.shape, arr.dtype)
elif which == "service":
    try:
        img = read_image(data, Limits())
        print("decoded to", img.size, img.mode)
    except HTTPException as e:
        print(e.status_code, e.detail)
elif which == "old_service":  # the service's decode before this change, replicated for the comparison
    img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    img.load()
    img = ImageOps.exif_transpose(img) or img
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    out = Image.alpha_composite(white, rgba).convert("RGB")
    print("decoded to", out.size, out.mode)
elif which.startswith("concurrent"):  # 16 uploads at once through the service's decode, N slots
    decode.set_decode_slots(int(which.split(":")[1]))
    sizes = []
    threads = [threading.Thread(target=lambda: sizes.append(decode.read_image(data, Limits()).size)) for _ in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(len(sizes), "decoded to", sizes[0])
print(f"{time.perf_counter() - t0:.2f} s")
"""


def decode_case(which: str, path: Path, cwd: Path) -> dict[str, Any]:
    """One decode in a child that has imported everything first: its peak RSS, and the peak before the
    decode (``before_mb``, the imports), so ``peak - before`` is what the decode itself cost."""
    r = run_child([sys.executable, "-c", DECODE, which, str(path)], cwd)
    lines = (r["stdout"].strip() or r["stderr"].strip()).splitlines()
    if lines and lines[0].startswith("before "):
        r["before_mb"] = float(lines.pop(0).split()[1])
    r["message"] = lines[0] if lines else "(no output)"
    return r


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line-mb", type=int, default=250, help="length of the one ndjson line, MB")
    ap.add_argument("--bomb-gb", type=float, default=3.2, help="what the .npz and .mat bombs decompress to, GB")
    ap.add_argument("--out", default=str(RESULTS / "memory_readers"))
    a = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        small = d / "one.ndjson"
        small.write_text('{"word": "cat", "drawing": [[[0, 10, 20], [0, 5, 0]]]}\n')
        npz = d / "bomb.npz"
        write_npz_bomb(npz, int(a.bomb_gb * 1e9 / 785))
        mat = d / "shoes" / "shoes_sketch_db_train.mat"
        mat.parent.mkdir()
        write_mat_bomb(mat, (int(a.bomb_gb * 1e9 / 65536), 256, 256))
        liar = d / "chairs" / "chairs_sketch_db_train.mat"
        liar.parent.mkdir()
        write_mat_bomb(liar, (int(a.bomb_gb * 1e9 / 65536), 256, 256), declared=(1, 256, 256))
        line = d / "long.ndjson"
        write_long_line(line, a.line_mb)
        png = d / "rgba16.png"
        write_png16(png)
        png8 = d / "rgba8.png"
        from PIL import Image

        Image.open(png).convert("RGBA").save(png8)  # 4000 x 4000 8-bit RGBA: inside the service's budget
        print(f"inputs written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        def row(case: str, f: Path, declared: str, r: dict[str, Any]) -> None:
            rows.append(
                {
                    "case": case,
                    "file_mb": round(f.stat().st_size / 1e6, 2),
                    "declared": declared,
                    "peak_rss_mb": r["peak_rss_mb"],
                    "rss_before_mb": r.get("before_mb", ""),
                    "wall_s": r["wall_s"],
                    "exit": r["exit"],
                    "stopped_by": r["message"].replace(str(d) + "/", "").replace("|", "/"),
                }
            )
            print(rows[-1], file=sys.stderr)

        row("data info: baseline (one-line ndjson)", small, "-", data_info(small, d))
        row("data info: zip-bomb .npz", npz, f"{a.bomb_gb} GB inflated", data_info(npz, d))
        row("data info: compressed-bomb .mat", mat, f"{a.bomb_gb} GB inflated", data_info(mat, d))
        row(
            "data info: compressed-bomb .mat, header says 1x256x256",
            liar,
            f"{a.bomb_gb} GB inflated",
            data_info(liar, d),
        )
        row(f"data info: one {a.line_mb} MB ndjson line", line, f"{a.line_mb} MB line", data_info(line, d))
        declared = "4000x4000 RGBA 16-bit: 128 MB"
        row("open_image (readers' limits: 256 MiB budget)", png, declared, decode_case("open_image", png, d))
        row("service read_image (64 MiB budget)", png, declared, decode_case("service", png, d))
        row("old service decode (replicated, for comparison)", png, declared, decode_case("old_service", png, d))
        declared8 = "4000x4000 RGBA 8-bit: 64 MB"
        for slots in (2, 16):
            row(
                f"16 concurrent service decodes, {slots} slots",
                png8,
                declared8,
                decode_case(f"concurrent:{slots}", png8, d),
            )
    doc = {"machine": machine_info(), "rows": rows}
    cols = ["case", "file_mb", "declared", "peak_rss_mb", "rss_before_mb", "wall_s", "exit", "stopped_by"]
    title = "Memory of hostile inputs: data info on bombs, the image decoder on a 16-bit RGBA PNG"
    _, md_path = write_results(a.out, doc, table_markdown(doc, cols, title))
    print(md_path.read_text())


if __name__ == "__main__":
    main()
