"""atomic_write: the new bytes or the old ones, never a mix, and no temporary file left."""
import pytest

from pemn.fileio import atomic_write


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("fsync", [True, False])
def test_bytes_and_writer_function(tmp_path, fsync):
    path = tmp_path / "out.bin"
    atomic_write(path, b"first", fsync=fsync)
    assert path.read_bytes() == b"first"
    atomic_write(path, lambda f: f.write(b"second"), fsync=fsync)
    assert path.read_bytes() == b"second"
    assert _files(tmp_path) == ["out.bin"]


def test_failing_writer_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def writer(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, writer)
    assert path.read_bytes() == b"old"
    assert _files(tmp_path) == ["out.bin"]


def test_mode_follows_the_umask(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(path, b"x")
    reference = tmp_path / "plain.bin"
    reference.write_bytes(b"x")
    assert path.stat().st_mode == reference.stat().st_mode
