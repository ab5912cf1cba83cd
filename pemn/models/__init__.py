"""Model zoo: plain ``nn.Module``s that know nothing about masks (``pemn.apply_`` masks them
from outside); one file per architecture family, every variant registered by name
(``create_model("resnet32", num_classes=100)``, ``list_models("convmixer_*")``)."""
from ._registry import DATA_ARGS, create_model, data_args, list_models, register_model
from .convmixer import ConvMixer
from .mlp import MLP
from .resnet50 import ResNet
from .resnet_cifar import CifarResNet
from .vit import VisionTransformer

__all__ = ["register_model", "create_model", "data_args", "DATA_ARGS", "list_models", "ConvMixer",
           "CifarResNet", "ResNet", "VisionTransformer", "MLP"]
