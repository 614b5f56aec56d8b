"""Writes the run directories in this folder with mnist-nn at commit ff70448 (the trainer before its redesign).

    git worktree add /tmp/old ff70448 && PYTHONPATH=/tmp/old/src:tests python tests/data/ff70448/make.py

- ``stopped/``: a toy run stopped by SIGINT in the middle of its second epoch (state.pt only);
- ``finished/``: the same run, uninterrupted: its metrics.jsonl is what resuming ``stopped`` must give.
The toy dataset is conftest's (600 training and 200 test bar images, seed 0), rebuilt by the tests.
"""

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import mnist_nn.training.trainer as trainer
from conftest import toy_spec, write_idx_dataset
from mnist_nn.core.errors import Interrupted
from mnist_nn.data.datasets import DatasetSpec, register_dataset

HERE = Path(__file__).resolve().parent
ARGS = dict(
    dataset="toy-compat",
    model="mlp",
    model_kwargs={"hidden": [16]},
    batch_size=32,
    val_size=100,
    epochs=3,
    lr=0.01,
    schedule="cosine",
    ema_decay=0.9,
    aug_rotate=5.0,
    shuffle=True,
    quiet=True,
    checkpoint_every=4,
)

register_dataset(DatasetSpec(**toy_spec("toy-compat")))
with tempfile.TemporaryDirectory() as scratch:
    data = write_idx_dataset(Path(scratch) / "toy", train=600, test=200)
    for name in ("stopped", "finished"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    trainer.train(data_dir=data, out=HERE / "finished", **ARGS)
    calls = [0]
    real = trainer.lr_factor

    def stop_at_step_25(*args):
        calls[0] += 1
        if calls[0] == 25:  # epoch 2 of 16 batches, batch 9: the step ends, the state is saved, the run stops
            signal.raise_signal(signal.SIGINT)
        return real(*args)

    trainer.lr_factor = stop_at_step_25
    try:
        trainer.train(data_dir=data, out=HERE / "stopped", **ARGS)
        sys.exit("the run was not stopped")
    except Interrupted as exc:
        print(exc)
    for path in (HERE / "finished").glob("*.png"):
        path.unlink()
    for path in (HERE / "stopped").iterdir():
        if path.name not in ("state.pt", "config.json", "metrics.jsonl"):
            path.unlink()
print(sorted(p.name for p in (HERE / "finished").iterdir()), os.listdir(HERE / "stopped"))
