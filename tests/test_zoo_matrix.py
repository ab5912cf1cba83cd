"""Every registered model x every strategy: apply_, a training step, and pack -> unpack; and
every registered model x every registered dataset, given its inputs by the data.

Each model keeps its registered architecture family and depth; the widest ones are built
narrower (``dim``/``layers`` kwargs, recorded in the artifact like any kwargs) and fed small
inputs, so the whole matrix stays a few seconds per model.
"""
import numpy as np
import pytest
import torch

import pemn
from pemn.artifact import pack, unpack
from pemn.config import ConfigError, RunConfig
from pemn.data import list_datasets
from pemn.models import create_model, list_models
from pemn.run import data_info, model_from_config
from pemn.transform import accepts

STRATEGIES = [pemn.Dense(), pemn.Mask(), pemn.OneLayer(), pemn.MP(), pemn.RP(ratio=1e-2),
              pemn.RP(ratio=0.1, order="permuted")]


def _build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The model with narrower widths where it is large, and a small input for it."""
    if name.startswith("vit"):
        return create_model(name, dim=32, img_size=8, num_classes=4), (2, 3, 8, 8)
    if name.startswith("convmixer"):
        return create_model(name, dim=16, num_classes=4), (2, 3, 16, 16)
    if name == "resnet50":
        return create_model(name, layers=(1, 1, 1, 1), num_classes=4), (2, 3, 32, 32)
    if name.startswith("mlp"):
        model = create_model(name, num_classes=4)
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        return model, (2, first.in_features)
    return create_model(name, num_classes=4), (2, 3, 16, 16)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
@pytest.mark.parametrize("name", list_models())
def test_every_model_every_strategy(name, strategy):
    torch.manual_seed(0)
    model, shape = _build(name)
    args = {"keep_ratio": 0.5, "seed": 1}
    pemn.apply_(model, strategy, **{k: args[k] for k in accepts(strategy)})
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    fixed = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_fixed")}
    assert fixed or isinstance(strategy, pemn.Dense)

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()(x).logsumexp(-1).mean().backward()
    for k, p in model.named_parameters():
        if k.endswith("_scores") or isinstance(strategy, pemn.Dense):
            assert p.grad is not None and p.grad.abs().sum() > 0, k
    opt.step()
    for k, v in model.state_dict().items():
        if k in fixed:
            assert torch.equal(v, fixed[k]), f"{k} changed in a training step"

    model.eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(unpack(pack(model))(x), expected)


# Every registered model x every registered dataset, built as a run builds it
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """Tiny ``folder`` and ``npz`` datasets: the data options of each, as a config sets them."""
    from PIL import Image

    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / "folder" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(
                root / "folder" / c / f"{i}.png")
    np.savez(root / "x.npz", images=rng.integers(0, 256, (10, 12, 12), dtype=np.uint8),
             labels=np.arange(10) % 5)
    return {"folder": {"root": str(root / "folder"), "image_size": 16}, "npz": {"root":
            str(root / "x.npz")}}


@pytest.mark.parametrize("dataset", list_datasets())
@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_on_every_dataset_without_kwargs(name, dataset, own_data):
    cfg = RunConfig()  # dense: the fill is the same on any data; what fits is the question
    cfg.model.name, cfg.data.dataset, cfg.mask.strategy = name, dataset, pemn.Dense()
    for key, value in own_data.get(dataset, {}).items():
        setattr(cfg.data, key, value)
    info = data_info(cfg)
    torch.manual_seed(0)
    model = model_from_config(cfg, info)
    x = torch.randn(2, *info.input_shape)
    y = torch.arange(2) % info.num_classes
    logits = model.train()(x)
    assert logits.shape == (2, info.num_classes)
    torch.nn.functional.cross_entropy(logits, y).backward()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.step()


def test_model_kwargs_win_and_a_conflict_is_one_line(caplog):
    cfg = RunConfig()
    cfg.model.name, cfg.data.dataset = "vit_tiny", "cifar10"
    cfg.model.kwargs = {"in_channels": 1, "img_size": 16}
    with pytest.raises(ConfigError, match=r"^model.kwargs.img_size = 16, but cifar10 gives 32; "
                       r"model.kwargs.in_channels = 1, but cifar10 gives 3; remove it"):
        model_from_config(cfg)
    cfg.model.kwargs = {"num_classes": 12, "depth": 1}  # a wider head still trains: logged
    model = model_from_config(cfg)
    assert model.model_args["kwargs"] == {"in_channels": 3, "img_size": 32, "num_classes": 12,
                                          "depth": 1}
    assert "2 logits beyond cifar10's 10 classes" in caplog.text
    cfg.model.kwargs = {"num_classes": 4}
    with pytest.raises(ConfigError, match="num_classes = 4, but cifar10 gives 10"):
        model_from_config(cfg)
