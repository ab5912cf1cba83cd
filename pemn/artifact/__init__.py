"""PEMN artifacts: a trained model as seed + bit masks + BN, restored bit-exactly (PEMN.md §5).

    >>> from pemn.artifact import save, load
    >>> num_bytes = save(model, "run.pemn")  # model: create_model(...) + pemn.apply_(...)
    >>> model = load("run.pemn")             # eval mode; logits identical to the saved model

The file layout is documented in :mod:`pemn.artifact.format`; masks are coded by
:mod:`pemn.artifact.codec`; ``pemn.storage.size_report`` prices a file component by component.
"""
from pemn.artifact.export import EXPORT_FORMATS, default_input_shape, export
from pemn.artifact.format import FORMAT_VERSION, MAGIC, ArtifactError
from pemn.artifact.store import STORE_PROTOTYPE_MAX_BYTES, describe, load, pack, save, unpack

__all__ = ["save", "load", "pack", "unpack", "describe", "export", "ArtifactError",
           "FORMAT_VERSION", "MAGIC", "STORE_PROTOTYPE_MAX_BYTES", "EXPORT_FORMATS",
           "default_input_shape"]
