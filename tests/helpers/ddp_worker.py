"""Run under torchrun by tests/test_train.py: train a tiny model, then dump this rank's masks."""
import sys
from pathlib import Path

import torch

from pemn.config import load_config, to_dict
from pemn.data import load_dataset
from pemn.distributed import setup, teardown
from pemn.masking import current_mask
from pemn.run import _loaders, build_model
from pemn.train import train
from pemn.transform import masked_tensors

out = Path(sys.argv[1])
cfg = load_config(None, sys.argv[2:])
world = setup(torch.device("cpu"))
ds = load_dataset(cfg.data.dataset)
model = build_model(cfg, ds.image_shape[0], ds.num_classes)
train_loader, evals = _loaders(cfg, ds, torch.device("cpu"), world)
history = train(model, train_loader, evals, cfg.optim, out, world, to_dict(cfg), progress=False)
masks = {f"{f}.{n}": current_mask(m, n) for f, m, n in masked_tensors(model)}
torch.save({"masks": masks, "history": history, "batches": len(train_loader)},
           out / f"rank{world.rank}.pt")
teardown(world)
