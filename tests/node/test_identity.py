"""Node identity: key file creation, permissions, corruption, stable node id."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from node import identity
from node.identity import Identity, IdentityError


def test_create_then_load_gives_the_same_identity(tmp_path: Path) -> None:
    created = identity.load_or_create(tmp_path / "node")
    key_file = identity.key_path(tmp_path / "node")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    loaded = identity.load(tmp_path / "node")
    assert loaded.node_id == created.node_id == created.public_key.hex()
    assert len(created.public_key) == 32 and len(created.node_id) == 64
    assert identity.load_or_create(tmp_path / "node").node_id == created.node_id


def test_node_id_derives_from_the_seed() -> None:
    a = Identity.from_seed(b"\x05" * 32)
    assert a.node_id == Identity.from_seed(b"\x05" * 32).node_id
    assert a.node_id == bytes(a.signing_key.verify_key).hex()
    assert a.seed.hex() not in repr(a)
    with pytest.raises(IdentityError):
        Identity.from_seed(b"short")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_readable_by_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    identity.load_or_create(tmp_path)
    key_file = identity.key_path(tmp_path)
    os.chmod(key_file, mode)
    with pytest.raises(IdentityError) as info:
        identity.load(tmp_path)
    assert str(key_file) in str(info.value) and f"chmod 600 {key_file}" in str(info.value)
    assert stat.S_IMODE(key_file.stat().st_mode) == mode  # nothing changed behind the user's back


@pytest.mark.parametrize(
    "content", [b"", b"not hex at all\n", b"abcd\n", b"\xff\xfe\x00binary", ("11" * 33).encode()], ids=repr
)
def test_corrupt_key_file(tmp_path: Path, content: bytes) -> None:
    key_file = identity.key_path(tmp_path)
    key_file.write_bytes(content)
    os.chmod(key_file, 0o600)
    with pytest.raises(IdentityError, match="corrupt") as info:
        identity.load(tmp_path)
    assert str(key_file) in str(info.value)
    assert key_file.read_bytes() == content


def test_missing_key_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="rakis init"):
        identity.load(tmp_path)


def test_key_path_that_is_a_directory(tmp_path: Path) -> None:
    identity.key_path(tmp_path).mkdir()
    with pytest.raises(IdentityError, match="not a regular file"):
        identity.load(tmp_path)


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    first = identity.load_or_create(tmp_path)
    with pytest.raises(IdentityError, match="already exists"):
        identity.save(Identity.generate(), tmp_path)
    assert identity.load(tmp_path).node_id == first.node_id
    second = Identity.generate()
    identity.save(second, tmp_path, overwrite=True)
    assert identity.load(tmp_path).node_id == second.node_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]  # no temp files left


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IdentityError, match="cannot"):
        identity.load_or_create(blocker / "sub")
