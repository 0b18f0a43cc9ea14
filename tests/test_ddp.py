"""The one training loop under torchrun: 2 CPU processes, gloo backend, SketchMate for a few iterations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from sketchsearch.data.batching import SketchDataset
    from sketchsearch.data.sketch import Sketch
    from sketchsearch.methods.sketchmate import SketchMate
    from sketchsearch.train import TrainConfig, train

    out = sys.argv[1]
    rng = np.random.default_rng(0)
    sketches = [Sketch([rng.uniform(0, 50, (int(rng.integers(2, 9)), 2))]) for _ in range(16)]
    m = SketchMate(nbits=16, n_classes=2, cnn_width=0.125, rnn_hidden=8)
    data = SketchDataset(sketches, [i % 2 for i in range(16)], m.preprocessing)
    cfg = TrainConfig(iterations=3, batch_size=4, phase="pretrain_fused", out=out, log_every=1, progress=False)
    res = train(m, data, cfg)
    rank = int(os.environ["RANK"])
    digest = float(sum(p.double().sum() for p in m.parameters()))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        world = int(os.environ["WORLD_SIZE"])
        json.dump({"rank": rank, "world": world, "iterations": res.iterations, "digest": digest}, f)
    """
)


@pytest.mark.slow
def test_train_under_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(out),
    ]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and all(r["iterations"] == 3 for r in ranks)
    # DDP keeps the replicas identical: both ranks end with the same weights
    assert ranks[0]["digest"] == pytest.approx(ranks[1]["digest"], rel=1e-6)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log] == [1, 2, 3]  # rank 0 alone writes the log
