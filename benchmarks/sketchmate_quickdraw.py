"""SketchMate on QuickDraw (raw ndjson, stroke order + timing): the issue's table in one run.

    python benchmarks/sketchmate_quickdraw.py [--data ../shared/data/quickdraw/raw] [--bits 16 32 64]
        [--pretrain-iterations 300 --fused-iterations 100 --iterations 300 --batch-size 64] [--ship]

Protocol (scaled from the paper's 100 queries + 1,000 gallery sketches per class on 3.8M sketches to a
folder with 11-114 drawings per class): classes are split (seeded) into seen and unseen (``--unseen``
classes, zero-shot); each seen class gives 10% of its drawings as queries (>= 1), 30% as gallery (>= 1),
the rest for training; each unseen class 10% queries, the rest gallery. Retrieval is class-level (same
class = relevant), queries against the gallery of their own side (seen / unseen). mAP@all and P@k with
``k = --p-at`` (10: the paper's P@200 is 20% of a 1,000-sketch class gallery; our class galleries hold
~8 sketches, so P@10 is the nearest sensible analogue; it is bounded by gallery size / 10).

Rows: full model at every ``--bits``; at 64 bits (when 64 is among ``--bits``): CNN branch only, RNN branch
only, without the centre loss, without noise removal; the pixel ITQ and LSH baselines at every ``--bits``. Branch pretraining (stage 1) is
run once and shared by every row that has that branch; the 64-bit fused pretraining is shared by the full,
no-centre and no-noise-removal rows (they differ only after it). Results are written after every row to
``benchmarks/results/sketchmate_quickdraw.{json,md}``. ``--ship`` saves the 64-bit full model as
``src/sketchsearch/pretrained/sketchmate-quickdraw-64``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, RESULTS, ROOT, machine_info, write_results

from sketchsearch.methods.base import create_method
from sketchsearch.methods.sketchmate import (
    SketchMate,
    load_quickdraw_sketches,
    recognition_accuracy,
    retrieval_metrics,
    split_by_class,
    train_sketchmate,
)
from sketchsearch.train import TrainConfig, train


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
    ap.add_argument("--p-at", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-classes", type=int, default=None, help="use only the first N classes (smoke runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ship", action="store_true", help="save the 64-bit full model as the shipped artifact")
    ap.add_argument("--out", default=str(RESULTS / "sketchmate_quickdraw"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t_load = time.perf_counter()
    by_class, skipped = load_quickdraw_sketches(args.data)
    if args.max_classes:
        by_class = {c: by_class[c] for c in sorted(by_class)[: args.max_classes]}
    split = split_by_class(by_class, unseen=args.unseen, seed=args.seed)
    split.skipped = skipped
    n_classes = len(split.classes)
    y_train = split.label_ids(split.train)
    held = split.query + split.gallery
    print(f"data: {split.summary()} (read in {time.perf_counter() - t_load:.1f}s)", flush=True)
    cfg = TrainConfig(
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=False,
        log_every=50,
    )
    report: dict[str, Any] = {
        "benchmark": "sketchmate_quickdraw",
        "command": "python benchmarks/sketchmate_quickdraw.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": args.data, "split": split.summary(), "p_at": args.p_at, "config": vars(args),
        "machine": {**machine_info(), "threads": args.threads},
        "rows": [],
    }  # fmt: skip

    def evaluate(name: str, bits: int, method: Any, train_info: dict[str, Any]) -> dict[str, Any]:
        method.cpu().eval()
        q_lab, g_lab = [s.label for s in split.query], [s.label for s in split.gallery]
        seen = retrieval_metrics(method, split.query, q_lab, split.gallery, g_lab, ks=(args.p_at,))
        zs = retrieval_metrics(
            method, split.unseen_query, [s.label for s in split.unseen_query],
            split.unseen_gallery, [s.label for s in split.unseen_gallery], ks=(args.p_at,),
        )  # fmt: skip
        row = {
            "row": name, "bits": bits, "mAP@all": seen["mAP@all"], f"P@{args.p_at}": seen[f"P@{args.p_at}"],
            "zero_shot_mAP@all": zs["mAP@all"], f"zero_shot_P@{args.p_at}": zs[f"P@{args.p_at}"],
            "recognition_acc": recognition_accuracy(method, held, split.label_ids(held)) if isinstance(method, SketchMate) else None,
            "train_seconds": train_info.get("train_seconds"), "encode_per_second": seen["encode_per_second"],
            "training": train_info,
        }  # fmt: skip
        report["rows"].append(row)
        write(report)
        print(f"{name:>28} {bits:3d} bits  mAP@all {row['mAP@all']:.4f}  P@{args.p_at} {row[f'P@{args.p_at}']:.4f}  "
              f"zero-shot mAP {row['zero_shot_mAP@all']:.4f}  acc {row['recognition_acc']}  train {row['train_seconds']}s", flush=True)  # fmt: skip
        return row

    def write(rep: dict[str, Any]) -> None:
        write_results(args.out, rep, markdown(rep))

    # ---- the pixel baselines first (seconds), then SketchMate
    for bits in args.bits:
        for name in ("itq", "lsh"):
            b = create_method(name, nbits=bits)
            t0 = time.perf_counter()
            b.fit(split.train)
            evaluate(
                f"{name.upper()} (pixels 32x32)",
                bits,
                b,
                {"train_seconds": round(time.perf_counter() - t0, 1)},
            )
    # ---- stage 1, shared: each branch pretrained once for recognition
    from sketchsearch.data.batching import SketchDataset

    base = SketchMate(nbits=64, n_classes=n_classes)

    data_both = SketchDataset(split.train, y_train, base.preprocessing)
    shared: dict[str, float] = {}
    for phase in ("pretrain_cnn", "pretrain_rnn"):
        res = train(
            base,
            data_both,
            TrainConfig(**{**vars(cfg), "phase": phase, "iterations": args.pretrain_iterations}),
        )
        shared[phase] = round(res.seconds, 1)
        print(f"{phase}: {res.seconds:.0f}s, last {res.history[-1] if res.history else {}}", flush=True)
    branch_state = {k: v.clone() for k, v in base.state_dict().items() if k.startswith(("cnn", "rnn"))}

    def fresh(**kw: Any) -> SketchMate:
        m = SketchMate(n_classes=n_classes, **kw)
        own = m.state_dict()
        m.load_state_dict({**own, **{k: v for k, v in branch_state.items() if k in own}})
        return m

    def run(m: SketchMate, **kw: Any) -> dict[str, Any]:
        info = train_sketchmate(
            m,
            split.train,
            y_train,
            cfg,
            skip_branch_pretraining=True,
            fused_iterations=args.fused_iterations,
            **kw,
        )
        branches = {
            "both": ("pretrain_cnn", "pretrain_rnn"),
            "cnn": ("pretrain_cnn",),
            "rnn": ("pretrain_rnn",),
        }[m.branches]
        info["shared_pretraining_seconds"] = {p: shared[p] for p in branches}
        info["train_seconds"] = round(info["train_seconds"] + sum(shared[p] for p in branches), 1)
        return info

    if 64 in args.bits:  # the ablations are measured at 64 bits only
        # ---- 64 bits: full, then the ablations that share its fused pretraining
        m64 = fresh(nbits=64)
        info64 = train_sketchmate(m64, split.train, y_train, replace_its(cfg, 0), skip_branch_pretraining=True,
                                  fused_iterations=args.fused_iterations, noise_removal=True)  # fmt: skip
        fused_state = copy.deepcopy(m64.state_dict())
        fused_secs = info64["stages"]["pretrain_fused"]["seconds"]
        for name, kw, nr in (("full", {}, True), ("no centre loss", {"use_centre_loss": False}, True),
                             ("no noise removal", {}, False)):  # fmt: skip
            m = SketchMate(nbits=64, n_classes=n_classes, **kw)
            m.load_state_dict(fused_state)
            info = train_sketchmate(
                m,
                split.train,
                y_train,
                cfg,
                skip_branch_pretraining=True,
                fused_iterations=0,
                noise_removal=nr,
            )
            info["stages"]["pretrain_fused"] = info64["stages"]["pretrain_fused"]
            info["shared_pretraining_seconds"] = dict(shared)
            info["train_seconds"] = round(info["train_seconds"] + fused_secs + sum(shared.values()), 1)
            evaluate(f"SketchMate ({name})" if name != "full" else "SketchMate", 64, m, info)
            if name == "full" and args.ship:
                from sketchsearch.model import save_model

                card = save_model(m, ROOT / "src" / "sketchsearch" / "pretrained" / "sketchmate-quickdraw-64", training={
                    "command": report["command"], "recipe_equivalent": (
                        f"sketchsearch train sketchmate --data {args.data} --iterations {args.iterations} --batch-size "
                        f"{args.batch_size} --lr {args.lr} --seed {args.seed} --set unseen={args.unseen} --set "
                        f"pretrain_iterations={args.pretrain_iterations} --set fused_iterations={args.fused_iterations}"),
                    "data": "QuickDraw raw ndjson subset (../shared/data/quickdraw/raw), seen classes' train part",
                    **info, "split": split.summary(), "classes": split.classes, "unseen_classes": split.unseen_classes,
                }, metrics={k: v for k, v in report["rows"][-1].items() if k not in ("training",)})  # fmt: skip
                print(f"shipped {card.model_id}", flush=True)

        # ---- single branches at 64 bits
        for name, br in (("CNN branch only", "cnn"), ("RNN branch only", "rnn")):
            m = fresh(nbits=64, branches=br)
            evaluate(f"SketchMate ({name})", 64, m, run(m))

    # ---- other code lengths (full model) and the pixel baselines
    for bits in args.bits:
        if bits != 64:
            m = fresh(nbits=bits)
            evaluate("SketchMate", bits, m, run(m))
    report["finished"] = True
    write(report)
    return 0


def replace_its(cfg: TrainConfig, iterations: int) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, iterations=iterations)


def markdown(rep: dict[str, Any]) -> str:
    k = rep["p_at"]
    s = rep["split"]
    lines = [
        "# SketchMate on QuickDraw (raw ndjson subset)",
        "",
        f"Command: `{rep['command']}`",
        "",
        (
            f"Split: {s['seen_classes']} seen classes ({s['train']} train / {s['gallery']} gallery / {s['query']} query sketches), "
            f"{s['unseen_classes']} unseen classes ({s['unseen_gallery']} gallery / {s['unseen_query']} query) for zero-shot. "
            f"P@{k}: see the script's docstring. Train seconds: CPU, {rep['machine']['threads']} thread(s), shared machine, "
            "all stages of that row (shared pretraining counted in every row that uses it). Encode/s: sketches encoded "
            "per second on CPU, rendering and stroke encoding included."
        ),
        "",
        f"| row | bits | mAP@all | P@{k} | zero-shot mAP@all | zero-shot P@{k} | recognition acc | train s | encode/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rep["rows"]:
        acc = f"{r['recognition_acc']:.3f}" if r.get("recognition_acc") is not None else "-"
        lines.append(
            f"| {r['row']} | {r['bits']} | {r['mAP@all']:.4f} | {r[f'P@{k}']:.4f} | {r['zero_shot_mAP@all']:.4f} | "
            f"{r[f'zero_shot_P@{k}']:.4f} | {acc} | {r['train_seconds']} | {r['encode_per_second']:.0f} |"
        )
    if not rep.get("finished"):
        lines += ["", "_(run in progress: rows are added as they finish)_"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
