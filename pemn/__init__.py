"""pemn: Parameter-Efficient Masking Networks (Bai et al., NeurIPS 2022, arXiv 2210.06699).

Learn binary masks over fixed random weights with few unique values, and store a trained model
as seed + bit-packed masks + BN.

    >>> import pemn, torch
    >>> model = pemn.apply_(torch.nn.Sequential(torch.nn.Linear(8, 4)), pemn.RP(ratio=0.1))
    >>> pemn.stats(model).num_unique
    4
"""
from pemn import artifact
from pemn.artifact import load, save
from pemn.competitors import Binary, MagnitudePrune, Quantized, RandomPrune, Sparse
from pemn.fill import MP, RP, Dense, Mask, OneLayer
from pemn.pranc import PRANC
from pemn.storage import Stats, paper_compression_ratio, stats
from pemn.transform import apply_, masked_tensors, materialize_, register_maskable

__all__ = ["apply_", "materialize_", "register_maskable", "save", "load", "artifact",
           "masked_tensors", "stats", "Stats", "paper_compression_ratio", "Dense", "Mask",
           "OneLayer", "MP", "RP", "RandomPrune", "MagnitudePrune", "Sparse", "Quantized",
           "Binary", "PRANC"]
__version__ = "0.1.0"
