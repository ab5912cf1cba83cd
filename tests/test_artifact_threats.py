"""Hostile artifacts that are well formed: small files that demand huge work, re-sealed edits
(valid checksums, other meaning), and signatures, the one thing that catches the latter."""
import hashlib
import importlib
import json
import re
import struct
import time
import tracemalloc

import pytest
import torch

import pemn
from pemn.artifact import ArtifactError, describe, load, pack, unpack
from pemn.artifact import format as fmt
from pemn.models import create_model


def _edit(data: bytes, edit) -> bytes:
    """Change the header and re-seal: what anyone can do to a file they downloaded."""
    c = fmt.read_container(data)
    header = c.header
    edit(header)
    return fmt.seal(header, bytes(data[c.header_bytes:]))


@pytest.fixture(scope="module")
def rp_file():
    model = pemn.apply_(create_model("convmixer_64_d4", in_channels=1),
                        pemn.RP(ratio=0.01, order="copy"))
    return pack(model)


def _bounded(fn, megabytes=300, seconds=2.0, error=ArtifactError):
    """Run ``fn``, which must raise ``error``, within the bounds of docs/THREAT_MODEL.md:
    timed as it runs, then again under tracemalloc (which slows Python allocations) for its
    traced-memory peak (numpy and Python allocations; the refusal must come before any
    large one). The time is this process's CPU time: wall time also counts whatever else
    the machine runs, and made the bound fail under load."""
    start = time.process_time()
    with pytest.raises(error):
        fn()
    elapsed = time.process_time() - start
    tracemalloc.start()
    try:
        with pytest.raises(error) as err:
            fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < megabytes * 2**20 and elapsed < seconds, (peak, elapsed)
    return str(err.value)


def test_version_1_is_refused_before_its_header_is_used(rp_file):
    """Issue 23 (1): a 624-byte version-1 file with ``depth=65536`` and
    ``other.num_tensors=10**12`` ran 76 s and took 2.6 GB; version 1 is no longer read."""
    header = json.dumps({"format": "pemn-artifact", "format_version": 1,
                         "model": {"name": "convmixer_64_d4", "kwargs": {"depth": 65536}},
                         "other": {"num_tensors": 10**12}, "sections": []}).encode()
    data = fmt.MAGIC + struct.pack("<II", 1, len(header)) + hashlib.sha256(header).digest() \
        + header
    for read in (unpack, describe, pemn.artifact.read_header):
        assert "unsupported artifact format version 1" in _bounded(lambda: read(data))


def test_a_long_header_buys_no_long_build(rp_file):
    """Item 1's other path: the meta build's budget grew with the names a header lists, so
    16,384 ties and ``depth=65536`` bought ~20 s of building; it is now capped."""
    def deep(h):
        h["model"]["kwargs"]["depth"] = 65536
        h["ties"] = [[f"alias{i}", h["tensors"][0]["name"]] for i in range(16_000)]
    data = _edit(rp_file, deep)
    for read in (unpack, describe):
        assert "builds far more tensors than the file lists" in _bounded(lambda: read(data))


def test_legacy_rans_masks_are_refused(rp_file):
    """Issue 23 (8): the legacy rANS decoder kept a 274-KB file busy for 12 s; it is gone."""
    def rans(h):
        h["tensors"][0]["encoding"] = "rans"  # the first entry is a mask
    assert "unknown encoding 'rans'" in _bounded(lambda: unpack(_edit(rp_file, rans)))


def test_tiny_file_claiming_huge_sparse_masks_is_refused(rp_file):
    """keep ~1e-9 makes 2**31 weights cost ~750 bytes: refused before any decoding."""
    def huge(h):
        h["pemn"]["keep_ratio"] = 1e-9
        h["tensors"][0]["shape"] = [2**15, 2**15, 2]
    message = _bounded(lambda: unpack(_edit(rp_file, huge)))
    assert "values" in message


def test_keep_ratio_one_masks_of_zero_bytes_are_bounded(rp_file):
    """keep 1 makes every mask 0 bytes; the default limit is 1,024 values per file byte."""
    def dense_masks(h):
        h["pemn"]["keep_ratio"] = 1.0
        for m in h["tensors"]:
            if "fan_in" in m:  # a mask: what its bytes would be is not looked at before
                m.update(shape=[4096, 4096], encoding="bits", num_kept=4096 * 4096)
    message = _bounded(lambda: unpack(_edit(rp_file, dense_masks)))
    assert "max_elements" in message


def test_stored_dtype_must_fit_the_skeleton():
    """Issue 23 (6): a float64 1e300 is finite, so it passed the finite check and became inf
    in the float32 model; dtypes are now compared with the skeleton's."""
    model = pemn.apply_(create_model("convmixer_64_d4", in_channels=1), pemn.RP(ratio=0.01))
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.bias = torch.nn.Parameter(torch.full(norm.bias.shape, 1e300, dtype=torch.float64))
    data = pack(model)
    for form in pemn.artifact.FORMS:
        message = _bounded(lambda: unpack(data, form=form))
        assert "stored as torch.float64, which the skeleton's torch.float32 cannot hold" \
            in message
    with torch.no_grad():
        norm.bias.fill_(0.5)
    assert isinstance(unpack(pack(model.float()), form="dense"), torch.nn.Module)


@pytest.fixture(scope="module")
def large_mask_file():
    """A Mask file of 2**22 weights whose every value is regenerated from the seed."""
    model = create_model("mlp", in_features=1024, hidden=[4096], num_classes=2)
    return pack(pemn.apply_(model, pemn.Mask(), keep_ratio=0.01))


@pytest.mark.parametrize("form", pemn.artifact.FORMS)
def test_regenerating_a_hostile_file_is_bounded_per_value(large_mask_file, form):
    """Issue 23 (4): regeneration took ~64 bytes per value (float64 over whole tensors), so a
    285-KB file used 11.8 GB before its digest failed. It now costs the float32 values (one
    prototype at a time in the dense and packed forms), and the file is refused on the digest."""
    data = _edit(large_mask_file, lambda h: h["pemn"].update(prototype_sha256=["0" * 64] * 2))
    message = _bounded(lambda: unpack(data, form=form), megabytes=6 * 4 + 24)
    assert "regenerated weights differ from the ones that were trained" in message


def test_default_limit_refuses_the_repro_size_before_any_work(rp_file):
    """Issue 23 (4): a 285-KB file claimed 2**28 values within the old default; the default
    is now 2**25 values (128 MiB of float32, ~1.3 s to regenerate)."""
    def huge(h):
        h["tensors"][0]["shape"] = [2**14, 2**14]
    assert "more than max_elements" in _bounded(lambda: unpack(_edit(rp_file, huge)))
    assert importlib.import_module("pemn.artifact.load")._element_limit(None, 285_000) == 2**25


@pytest.mark.parametrize("dataset, match", [
    ({"name": "mnist", "input_shape": [1, 65536, 65536]}, "input_shape must be 1 to 3"),
    ("abc", "header.dataset must be a JSON object"),
    (["mnist"], "header.dataset must be a JSON object"),
    ({"name": "../../../etc/passwd"}, "dataset must have a name of 1 to 64 letters"),
    ({"name": ["mnist"]}, "dataset must have a name"),
    ({"name": "mnist", "input_shape": [1, 28, 28], "std": [0.0]}, r"std must be .* \(> 0\)"),
    ({"name": "mnist", "input_shape": [1, 28, 28], "mean": [0.1, 0.2]}, "mean must be one"),
    ({"name": "mnist", "path": "/etc"}, "only the keys"),
])
def test_dataset_field_is_validated_before_use(rp_file, tmp_path, dataset, match):
    """Issue 23 (5): ``export(..., "onnx")`` allocated ``[1, 65536, 65536]`` (16 GiB), and
    other values gave raw TypeErrors or a plain ValueError. Every header's dataset is now
    validated where the header is read, for load, describe and export alike."""
    data = _edit(rp_file, lambda h: h.update(dataset=dataset))
    (tmp_path / "m.pemn").write_bytes(data)
    for read in (unpack, describe, lambda d: pemn.artifact.export(
            tmp_path / "m.pemn", tmp_path / "m.onnx", "onnx")):
        assert re.search(match, _bounded(lambda: read(data)))
    if isinstance(dataset, dict):
        with pytest.raises(ArtifactError, match=match):
            pack(unpack(rp_file), dataset=dataset)


def test_export_refuses_an_input_shape_that_does_not_fit(rp_file, tmp_path):
    """A valid shape for another model (3 channels into a 1-channel stem) is refused by name,
    not left to the ONNX tracer."""
    data = _edit(rp_file, lambda h: h.update(dataset={"name": "cifar10",
                                                      "input_shape": [3, 32, 32]}))
    (tmp_path / "m.pemn").write_bytes(data)
    with pytest.raises(ArtifactError, match=r"input_shape \[3, 32, 32\] does not fit"):
        pemn.artifact.export(tmp_path / "m.pemn", tmp_path / "m.onnx", "onnx")


@pytest.fixture(scope="module")
def sparse_file():
    """A coded mask + fp32 values per tensor (pemn.competitors.Sparse)."""
    return pack(pemn.apply_(create_model("convmixer_64_d4", in_channels=1), pemn.Sparse(0.1)))


@pytest.mark.parametrize("kept", [0, 1])
def test_tiny_file_claiming_huge_encoded_weights_is_refused(sparse_file, kept):
    """An empty (or one-value) sparse tensor of 2**30 weights costs a few bytes: refused by
    the values-per-byte limit before any decoding."""
    def huge(h):
        h["tensors"][0].update(shape=[2**14, 2**15, 2], num_kept=kept)  # a weight entry
    message = _bounded(lambda: unpack(_edit(sparse_file, huge)))
    assert "values" in message


@pytest.mark.parametrize("edit, outcome", [
    # what a re-sealed edit can do, and what the loader does about it
    (lambda h: h["model"]["kwargs"].update(act="relu"), "another model"),  # its activation
    (lambda h: h["pemn"].update(seed=h["pemn"]["seed"] + 1), "the same model"),  # RP is stored
    (lambda h: h["model"]["kwargs"].update(depth=3), "which convmixer_64_d4 does not have"),
    (lambda h: h["tensors"][-1].update(dtype="|u1"), r"is 8 bytes, but \[\] \|u1 values take 1"),
])
def test_resealed_edits_are_refused_or_load_as_documented(rp_file, edit, outcome):
    """The checksums catch corruption, not edits: a re-sealed file that is still consistent
    loads as what it now says (see docs/THREAT_MODEL.md); only a signature catches that."""
    data = _edit(rp_file, edit)
    if not outcome.endswith(" model"):
        with pytest.raises(ArtifactError, match=outcome):
            unpack(data)
        return
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(unpack(data).eval()(x), unpack(rp_file).eval()(x))
    assert same == (outcome == "the same model")


# ------------------------------------------------------------------------------------------
# Signatures
# ------------------------------------------------------------------------------------------

signing = pytest.importorskip("pemn.artifact.signing")
pytest.importorskip("cryptography")


def test_signed_file_verifies_and_edits_do_not(tmp_path, rp_file):
    author = signing.generate_key(tmp_path / "author.key")
    other = signing.generate_key(tmp_path / "other.key")
    model = unpack(rp_file)
    pemn.save(model, tmp_path / "m.pemn", sign_with=tmp_path / "author.key")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m.pemn", verify_key=author)(x), model(x))
    assert describe(tmp_path / "m.pemn")["signed_by"] == author

    with pytest.raises(ArtifactError, match="signed by key"):
        load(tmp_path / "m.pemn", verify_key=other)
    signed = (tmp_path / "m.pemn").read_bytes()
    resealed = _edit(signed[:-fmt.SIGNATURE_BYTES], lambda h: h["model"]["kwargs"].update(
        act="relu")) + signed[-fmt.SIGNATURE_BYTES:]
    with pytest.raises(ArtifactError, match="modified after signing"):
        unpack(resealed, verify_key=author)
    with pytest.raises(ArtifactError, match="not signed"):
        unpack(rp_file, verify_key=author)
    with pytest.raises(ArtifactError, match="already signed"):
        signing.sign(signed, tmp_path / "author.key")
