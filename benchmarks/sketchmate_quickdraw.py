"""SketchMate on QuickDraw (raw ndjson, stroke order + timing): the issue's table in one run.

    python benchmarks/sketchmate_quickdraw.py [--data ../shared/data/quickdraw/raw] [--bits 16 32 64]
        [--pretrain-iterations 300 --fused-iterations 100 --iterations 300 --batch-size 64] [--ship]

Protocol (scaled from the paper's 100 queries + 1,000 gallery sketches per class on 3.8M sketches to a
folder with 11-114 drawings per class): SketchMate's ``class_holdout`` split (``data.splits``) of
``data.sources.load_collection(--data)``: classes are split (seeded) into seen and unseen (``--unseen``
classes, zero-shot); each seen class gives 10% of its drawings as queries (>= 1), 30% as gallery (>= 1),
the rest for training; each unseen class 10% queries, the rest gallery. The split is made once, saved to
``<--out>_split.json``, and every row is trained and scored on it. Retrieval (``eval.evaluate``) is
class-level (same class = relevant), queries against the gallery of their own side (``main``: seen;
``zero_shot``: unseen). mAP@all and P@k with ``k = --p-at`` (10: the paper's P@200 is 20% of a 1,000-sketch
class gallery; our class galleries hold ~8 sketches, so P@10 is the nearest sensible analogue; it is
bounded by gallery size / 10).

Rows: every SketchMate row is one ``recipes.run_recipe("sketchmate", ...)`` call, the same as
``sketchsearch train sketchmate`` (all four stages, seeded before the method is built, so a row does not
depend on the rows before it): the full model at every ``--bits``; at 64 bits (when 64 is among ``--bits``)
without the centre loss, without noise removal, CNN branch only, RNN branch only. The pixel ITQ and LSH
baselines at every ``--bits`` are fitted on the split's train part (``eval.evaluate.evaluate_rows``).
Results are written after every row to ``<--out>.{json,md}`` (default
``benchmarks/results/sketchmate_quickdraw``). ``--ship`` saves the 64-bit full model (and its split) as
``src/sketchsearch/pretrained/sketchmate-quickdraw-64``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, RESULTS, ROOT, machine_info

from sketchsearch._io import atomic_write_text
from sketchsearch.data.sources import load_collection
from sketchsearch.data.splits import make_split
from sketchsearch.eval.evaluate import DEFAULT_KS, Row, evaluate_rows, markdown_table
from sketchsearch.recipes import run_recipe

#: (label, run_recipe options) of the 64-bit ablations, run after the 64-bit full model
ABLATIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("SketchMate (no centre loss)", {"use_centre_loss": False}),
    ("SketchMate (no noise removal)", {"noise_removal": False}),
    ("SketchMate (CNN branch only)", {"branches": "cnn"}),
    ("SketchMate (RNN branch only)", {"branches": "rnn"}),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA_ROOT / "quickdraw" / "raw"))
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--unseen", type=int, default=50, help="classes held out for zero-shot")
    ap.add_argument("--pretrain-iterations", type=int, default=300)
    ap.add_argument("--fused-iterations", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=300, help="iterations of the full-objective stage")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--p-at", type=int, default=10, choices=DEFAULT_KS, help="the P@k column")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split and of every row's training")
    ap.add_argument("--max-classes", type=int, default=None, help="use only the first N classes (smoke runs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it, bit for bit)")
    ap.add_argument("--ship", action="store_true", help="save the 64-bit full model as the shipped artifact")
    ap.add_argument("--out", default=str(RESULTS / "sketchmate_quickdraw"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    command = "python benchmarks/sketchmate_quickdraw.py " + " ".join(argv if argv is not None else sys.argv[1:])

    t_load = time.perf_counter()
    coll = load_collection(args.data)
    classes = set(coll.classes[: args.max_classes] if args.max_classes else coll.classes)
    split = make_split("class_holdout", [it for it in coll if it.label in classes], seed=args.seed, unseen=args.unseen)
    split_file = out.with_name(out.name + "_split.json")
    dataclasses.replace(split, data=args.data).save(split_file)
    print(f"data: {split.summary()} (read in {time.perf_counter() - t_load:.1f}s) -> {split_file}", flush=True)

    p_at = f"P@{args.p_at}"
    columns = ("mAP@all", p_at, "recognition_acc")
    notes = [
        (
            f"{p_at}: see the script's docstring. recognition_acc: the fused classifier's top-1 accuracy on the"
            " seen classes' held-out drawings (queries + gallery)."
        ),
        (
            "Every SketchMate row is one run_recipe('sketchmate', ...) call: all stages trained by that row,"
            f" seeded ({args.seed}) before the method is built; CPU, {args.threads} torch thread(s) (another"
            " thread count gives other weights: floating-point sums in another order). ITQ / LSH: fitted on the"
            " train part."
        ),
        f"Split: {split_file.name}. Train seconds and encode/s per row: `training`, `main.encode_per_s` (JSON).",
    ]
    meta = {"command": command, "config": vars(args), "split_file": split_file.name, "machine": machine_info()}

    def write(doc: dict[str, Any], finished: bool = False) -> None:
        doc["finished"] = finished
        atomic_write_text(out.with_suffix(".json"), json.dumps(doc, indent=2, default=str) + "\n")
        md = markdown_table(doc, columns)
        atomic_write_text(out.with_suffix(".md"), md + ("" if finished else "\n_(run in progress)_\n"))

    # ---- the pixel baselines first (seconds), then SketchMate
    baselines = [
        Row(f"{n.upper()} (pixels 32x32)", method=n, kwargs={"nbits": b, "seed": args.seed})
        for b in args.bits
        for n in ("itq", "lsh")
    ]
    doc = evaluate_rows(
        baselines,
        coll,
        split,
        title="SketchMate on QuickDraw (raw ndjson subset)",
        notes=notes,
        meta=meta,
        columns=columns[:2],
        progress=lambda s: print(s, flush=True),
    )
    write(doc)
    rows = [("SketchMate", 64, {})] if 64 in args.bits else []
    rows += [(label, 64, kw) for label, kw in ABLATIONS if 64 in args.bits]
    rows += [("SketchMate", b, {}) for b in args.bits if b != 64]
    recipe = {
        "seed": args.seed,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "split_file": split_file,
        "progress": False,
        "pretrain_iterations": args.pretrain_iterations,
        "fused_iterations": args.fused_iterations,
    }
    for label, bits, kw in rows:
        res = run_recipe("sketchmate", args.data, nbits=bits, **recipe, **kw)
        main_ = {**res.metrics["main"], "recognition_acc": res.metrics["recognition_acc"]}
        zero_shot = res.metrics.get("zero_shot")
        doc["rows"].append(
            {
                "label": label,
                "model": None,
                "method": "sketchmate",
                "kwargs": {"nbits": bits, **kw},
                "model_id": "unsaved",
                "training": res.training,
                "main": main_,
                **({"zero_shot": zero_shot} if zero_shot else {}),
            }
        )
        write(doc)
        print(
            f"{label:>30} {bits:3d} bits  mAP@all {main_['mAP@all']:.4f}  {p_at} {main_[p_at]:.4f}  zero-shot "
            f"mAP {zero_shot['mAP@all'] if zero_shot else float('nan'):.4f}  acc {main_['recognition_acc']:.3f}  "
            f"train {res.training['train_seconds']}s",
            flush=True,
        )
        if args.ship and (label, bits) == ("SketchMate", 64):
            from sketchsearch.model import save_model

            card = save_model(
                res.method,
                ROOT / "src" / "sketchsearch" / "pretrained" / "sketchmate-quickdraw-64",
                training={**res.training, "command": command},
                metrics=res.metrics,
                split=res.split,
            )
            print(f"shipped {card.model_id}", flush=True)
    write(doc, finished=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
