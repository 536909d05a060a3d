"""kuiper.files: outputs appear whole or not at all, and never over an input (by identity)."""

import os

import pytest

from kuiper.errors import KuiperError
from kuiper.files import atomic_write, check_output, same_file


def test_a_failure_midway_leaves_the_old_file_and_no_litter(tmp_path):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"the old model")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(out) as temporary:
            temporary.write_bytes(b"half of the new")
            raise RuntimeError("disk full")
    assert out.read_bytes() == b"the old model" and os.listdir(tmp_path) == ["model.gguf"]


def test_success_replaces_the_file_with_ordinary_permissions(tmp_path):
    out = tmp_path / "picture.png"
    with atomic_write(out) as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".png" and temporary != out
        temporary.write_bytes(b"new")
    umask = os.umask(0)
    os.umask(umask)
    assert out.read_bytes() == b"new" and os.stat(out).st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["picture.png"]


def test_inputs_are_compared_by_identity(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"precious")
    (tmp_path / "hard").hardlink_to(source)
    (tmp_path / "soft").symlink_to(source)
    (tmp_path / "sub").mkdir()
    for alias in [tmp_path / "hard", tmp_path / "soft", tmp_path / "sub" / ".." / "source.bin"]:
        assert same_file(alias, source)
        with pytest.raises(KuiperError, match=f"{alias}: is the input {source}"):
            with atomic_write(alias, [source]) as temporary:
                temporary.write_bytes(b"")
    assert source.read_bytes() == b"precious" and not same_file(tmp_path / "absent", source)


@pytest.mark.parametrize("name, message", [("sub", "is a folder"), ("missing/out.bin", "the folder .* does not exist")])
def test_folders_are_not_outputs(tmp_path, name, message):
    (tmp_path / "sub").mkdir()
    with pytest.raises(KuiperError, match=message):
        check_output(tmp_path / name)
