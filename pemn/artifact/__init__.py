"""PEMN artifacts: a trained model as seed + bit masks + its other tensors, restored exactly
(``pemn.save``, ``pemn.load``; the byte format: docs/FORMAT.md; the forms: docs/METHOD.md)."""
from pemn.artifact.export import EXPORT_FORMATS, default_input_shape, export
from pemn.artifact.format import MAGIC
from pemn.artifact.header import FORMAT_VERSION, ArtifactError, Header
from pemn.artifact.contents import describe
from pemn.artifact.load import DEFAULT_MAX_ELEMENTS, FORMS, load, read_header, unpack
from pemn.artifact.pack import STORE_PROTOTYPE_MAX_BYTES, pack, save

__all__ = ["save", "load", "pack", "unpack", "describe", "read_header", "export", "Header",
           "ArtifactError", "FORMAT_VERSION", "MAGIC", "FORMS", "DEFAULT_MAX_ELEMENTS",
           "STORE_PROTOTYPE_MAX_BYTES", "EXPORT_FORMATS", "default_input_shape"]
