"""Run under torchrun by tests/train/test_fit.py: one short fit per rank, recording each rank's dropout masks.

Each rank saves the mask its first dropout layer drew on its first training batch (padding is
static, so both ranks' masks have one shape) to $PROBE_OUT/mask_<rank>.pt.
"""

import os
import sys
from pathlib import Path

import torch

from bertnli.config import TrainConfig
from bertnli.train.fit import fit
from bertnli.train.prepare import prepare

out, data = Path(os.environ["PROBE_OUT"]), sys.argv[1]
cfg = TrainConfig(
    model="tiny-d2l-random",
    data=data,
    epochs=1,
    batch_size=8,
    lr=1e-3,
    max_len=32,
    dropout=0.5,
    limit_train=16,
    limit_eval=16,
    bucket=False,
    amp=False,
    checkpoint_every=0,
    cache_dir=str(out / "enc"),
    eval_test=False,
)
prep = prepare(cfg)
masks = []


def keep_first(module, inputs, output):
    if module.training and not masks:
        masks.append(((output == 0) & (inputs[0] != 0)).cpu())


prep.model.encoder.layers[0].dropout.register_forward_hook(keep_first)
fit(cfg, out / "run", prepared=prep, progress=False)
torch.save(masks[0], out / f"mask_{int(os.environ['RANK'])}.pt")
