"""Helper run by tests/train/test_lcam.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_lcam_ddp.py OUT
(also runnable as a single process). Trains an L-CAM-Fm head on a random tiny CNN with the
synthetic shapes for 2 epochs, global batch 32, and writes OUT (rank 0 only) plus
OUT.rank<R> marker files recording which ranks ran and how many samples each saw.
"""
import os
import sys

import torch

from camzoo.models.synthetic import ShapesDataset
from camzoo.models.testing import tiny_backbone
from camzoo.train.lcam import train_lcam
from camzoo.train.loop import distributed, rank_and_world


def main(out: str) -> None:
    torch.set_num_threads(1)
    with distributed("cpu") as dev:
        rank, world = rank_and_world()
        bb = tiny_backbone(num_classes=4, seed=0)
        tr = ShapesDataset(64, bb, seed=1)
        res = train_lcam(bb, tr, None, variant="fm", epochs=2, batch_size=32, lr=0.1,
                         lr_decay=0.9, out=out, overwrite=True, seed=0, progress=False,
                         log=lambda s: None)
        with open(f"{out}.rank{rank}", "w") as f:
            f.write(f"{world} {res['history'][-1]['train']['loss']:.8f}\n")


if __name__ == "__main__":
    main(sys.argv[1])
