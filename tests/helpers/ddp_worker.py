"""Run under torchrun by tests/test_train.py: train a tiny model, then dump this rank's masks."""
import sys

import torch

from pemn.config import load_config, to_dict
from pemn.data import load_dataset
from pemn.distributed import World, setup, teardown
from pemn.masking import current_mask
from pemn.run import _loaders, model_from_config
from pemn.rundir import RunDir
from pemn.train import train
from pemn.transform import masked_tensors

run_dir = RunDir(sys.argv[1])
cfg = load_config(None, sys.argv[2:])
world = World.from_env()
setup(world, torch.device("cpu"))
ds = load_dataset(cfg.data.dataset)
model = model_from_config(cfg)
train_loader, evals = _loaders(cfg, ds, torch.device("cpu"), world)
meta = {"config": to_dict(cfg), "model_args": model.model_args}
history = train(model, train_loader, evals, cfg.optim, run_dir, world, meta, progress=False)
masks = {f"{f}.{n}": current_mask(m, n) for f, m, n in masked_tensors(model)}
torch.save({"masks": masks, "history": history, "batches": len(train_loader)},
           run_dir.path / f"rank{world.rank}.pt")
teardown(world)
