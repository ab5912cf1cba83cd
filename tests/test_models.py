"""Model zoo: every registered model runs forward and backward; P counts match the paper's."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pemn.models import (
    MLP,
    ConvMixer,
    VisionTransformer,
    create_model,
    list_models,
    register_model,
)


def _num_weights(model: nn.Module) -> int:
    """P: weights of every conv and linear layer plus attention input projections (no biases)."""
    return sum(t.numel() for t in _weights(model))


def _weights(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out.append(m.weight)
        elif isinstance(m, nn.MultiheadAttention):
            out.append(m.in_proj_weight)  # out_proj is an nn.Linear, counted above
    return out


def _input_for(name: str, model: nn.Module) -> torch.Tensor:
    if isinstance(model, MLP):
        return torch.randn(2, model.in_features)
    size = 64 if name == "resnet50" else 32  # ResNet-50 downsamples 32x; 64 keeps 2x2 maps
    return torch.randn(2, 3, size, size)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    x = _input_for(name, model)
    logits = model(x)
    assert logits.shape == (2, model.num_classes)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"


@pytest.mark.parametrize("name", ["convmixer_64_d4", "resnet20", "vit_tiny"])
def test_grayscale_28x28(name: str) -> None:
    # Fashion-MNIST shapes: 1 channel, 28x28 (ViT needs img_size; 28 / patch 4 = 7x7 tokens)
    kwargs = {"img_size": 28} if name.startswith("vit") else {}
    model = create_model(name, in_channels=1, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 28, 28)).shape == (3, 7)


def test_mlp_takes_images_and_paper_shapes() -> None:
    assert create_model("mlp")(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    shapes = [tuple(w.shape) for w in _weights(create_model("mlp_paper"))]
    assert shapes == [(100, 512), (100, 100), (100, 100), (10, 100)]  # paper Eq. 4-6


@pytest.mark.parametrize("name, kwargs, num_weights", [
    ("convmixer_256_d6", {}, 437_248),
    ("convmixer_256_d8", {}, 581_120),
    ("convmixer_512_d6", {}, 1_660_928),
    ("convmixer_512_d8", {}, 2_210_816),
    ("convmixer_256_d8", {"num_classes": 100}, 604_160),
    ("convmixer_256_d6", {"num_classes": 200}, 485_888),
    ("resnet20", {}, 268_336),
    ("resnet32", {}, 461_872),
    ("resnet56", {}, 848_944),
    ("resnet32", {"option": "B"}, 464_432),
    ("resnet56", {"option": "B"}, 851_504),
    ("resnet32", {"num_classes": 100}, 467_632),
    ("resnet56", {"num_classes": 100}, 854_704),
    ("resnet50", {"num_classes": 100}, 23_659_712),
    ("resnet50", {"num_classes": 200}, 23_864_512),
])
def test_paper_weight_counts(name: str, kwargs: dict, num_weights: int) -> None:
    assert _num_weights(create_model(name, **kwargs)) == num_weights


@pytest.mark.parametrize("name, largest", [
    ("convmixer_256_d6", 65_536), ("convmixer_512_d8", 262_144),
    ("resnet32", 36_864), ("resnet56", 36_864), ("resnet50", 2_359_296),
])
def test_largest_weight(name: str, largest: int) -> None:
    # the MP prototype (the first largest layer)
    assert max(w.numel() for w in _weights(create_model(name))) == largest


def test_convmixer_has_no_bias_and_right_bn_count() -> None:
    model = create_model("convmixer_256_d6")
    assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1 + 2 * 6


def test_cifar_resnet_bn_channels() -> None:
    # BN channels: ResNet32 1,136, ResNet56 2,032 (option A)
    for name, channels in [("resnet32", 1_136), ("resnet56", 2_032)]:
        bns = [m for m in create_model(name).modules() if isinstance(m, nn.BatchNorm2d)]
        assert sum(m.num_features for m in bns) == channels


@pytest.mark.parametrize("name", ["convmixer_64_d4", "resnet20", "resnet50"])
def test_bn_affine_false_has_no_bn_parameters(name: str) -> None:
    # the official --bn_type not-learn ablation: BN normalises with running statistics only
    affine, plain = create_model(name), create_model(name, bn_affine=False)
    bns = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == sum(isinstance(m, nn.BatchNorm2d) for m in affine.modules())
    assert all(not m.affine and m.weight is None and m.running_mean is not None for m in bns)
    assert plain.model_args["kwargs"] == {"bn_affine": False}
    n = sum(p.numel() for p in affine.parameters()) - sum(p.numel() for p in plain.parameters())
    assert n == 2 * sum(m.num_features for m in bns)


def test_vit_uses_multihead_attention() -> None:
    model = create_model("vit_tiny")
    attn = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attn) == 2 and attn[0].in_proj_weight.shape == (3 * 64, 64)


def test_variant_defaults_and_overrides() -> None:
    model = create_model("convmixer_256_d6", num_classes=100, act="relu")
    assert isinstance(model, ConvMixer) and model.num_classes == 100
    assert isinstance(model.stem[1], nn.ReLU) and len(model.blocks) == 6
    vit = create_model("vit_256_d6", patch_size=8)
    assert isinstance(vit, VisionTransformer) and vit.pos_embed.shape == (1, 17, 256)


def test_create_model_drops_none_kwargs() -> None:
    model = create_model("convmixer_64_d4", num_classes=None, in_channels=None, act=None)
    assert model.num_classes == 10 and model.stem[0].in_channels == 3


def test_unknown_model_lists_choices_and_suggests() -> None:
    with pytest.raises(ValueError, match="convmixer_256_d6") as info:
        create_model("convmixer_256_d7")
    assert "Did you mean" in str(info.value) and "resnet32" in str(info.value)


def test_duplicate_registration_fails() -> None:
    def resnet32():  # same name as the registered CIFAR ResNet32
        raise AssertionError("never called")
    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet32)


def test_list_models() -> None:
    assert list_models("resnet*") == ["resnet20", "resnet32", "resnet50", "resnet56"]
    assert set(list_models("vit_*")) == {"vit_256_d6", "vit_256_d8", "vit_512_d6",
                                         "vit_512_d8", "vit_tiny"}
    assert list_models("nothing*") == []


@pytest.mark.parametrize("build, match", [
    (lambda: create_model("convmixer_64_d4", act="tanh"), "act='tanh': use one of"),
    (lambda: create_model("resnet20", option="C"), "option='C': use 'A'"),
    (lambda: create_model("resnet20", depth=21), "depth=21: a CIFAR ResNet needs"),
    (lambda: create_model("vit_tiny", img_size=30), "img_size=30 is not a multiple"),
    (lambda: create_model("vit_tiny", num_heads=3), "dim=64 is not a multiple of num_heads=3"),
])
def test_bad_hyperparameters_raise(build, match) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_vit_rejects_wrong_image_size() -> None:
    with pytest.raises(ValueError, match="img_size"):
        create_model("vit_tiny")(torch.randn(1, 3, 28, 28))


def test_data_args_come_from_the_signature_or_the_annotated_class() -> None:
    from pemn.models import data_args

    assert data_args("vit_tiny") == ("in_channels", "img_size", "num_classes")
    assert data_args("mlp") == ("in_channels", "img_size", "in_features", "num_classes")
    assert data_args("resnet20") == ("in_channels", "num_classes")

    @register_model
    def _test_pemn_flat(in_features: int, num_classes: int = 3) -> nn.Module:
        """A model naming its arguments: only those are given."""
        return nn.Linear(in_features, num_classes)

    @register_model
    def _test_pemn_unknown(**kwargs):
        """No annotation to read: the zoo's usual two arguments."""
        return nn.Identity()

    try:
        assert data_args("_test_pemn_flat") == ("in_features", "num_classes")
        assert data_args("_test_pemn_unknown") == ("in_channels", "num_classes")
    finally:
        from pemn.models import _registry
        _registry._MODELS.pop("_test_pemn_flat")
        _registry._MODELS.pop("_test_pemn_unknown")
