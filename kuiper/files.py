"""Writing outputs safely: never over an input, never half-written.

Every file the command line writes goes through `atomic_write`: the data goes to a temporary file
in the target's folder, which replaces the target (`os.replace`, atomic on POSIX and Windows) only
once it is complete, so a failure midway leaves the old file, or nothing, in place. Inputs are
compared by identity (device and inode, `os.path.samefile`), not by name, so a hard link or a
symbolic link to an input is refused as an output too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from kuiper.errors import KuiperError


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether `a` and `b` are the same file on disk (hard and symbolic links included); False when
    either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(out: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """`out` as a Path, once it is known to be writable as a new file: KuiperError if it is a folder,
    its folder does not exist, or it is (by identity) one of `inputs`; the message names both paths."""
    out = Path(out)
    if out.is_dir():
        raise KuiperError(f"{out}: is a folder; expected the name of a file to write")
    if not out.parent.is_dir():
        raise KuiperError(f"{out}: the folder {out.parent} does not exist")
    for source in inputs:
        if same_file(out, source):
            raise KuiperError(f"{out}: is the input {source} (the same file on disk); refusing to write over it")
    return out


def file_mode() -> int:
    """Permissions of a new file under the process umask (0o666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(out: str | Path, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary path beside `out` (same suffix, so writers that go by the extension work);
    when the block ends without an exception it replaces `out`, otherwise it is removed.

    Raises KuiperError before anything is written if `out` fails `check_output(out, inputs)`."""
    inputs = list(inputs)
    out = check_output(out, inputs)
    handle, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, file_mode())
        check_output(out, inputs)
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
