"""Outputs get the permissions the user's umask gives (0644 under 022), not safetensors' or mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from topa_plugin.utils.atomic import atomic_write, atomic_write_bytes, new_file_mode, share_like_new_files


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_follow_the_umask_and_replacements_keep_their_mode(tmp_path, umask):
    assert new_file_mode() == 0o666 & ~umask
    path = atomic_write_bytes(tmp_path / "a.bin", b"one")
    assert path.read_bytes() == b"one" and mode(path) == 0o666 & ~umask
    os.chmod(path, 0o600)
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]  # no temp file left


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = atomic_write_bytes(tmp_path / "keep.txt", b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_files_left_private_by_a_third_party_writer_get_the_umask_mode(tmp_path, umask):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))  # safetensors creates it 0600
    (tmp_path / "sub").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "sub" / "shard.safetensors"))
    share_like_new_files(tmp_path)
    assert {mode(tmp_path / "model.safetensors"), mode(tmp_path / "sub" / "shard.safetensors")} == {0o666 & ~umask}


def test_project_outputs_are_not_private(tmp_path, umask):
    """Files written through safetensors (memory banks, adapters, cache entries) and TextVid files."""
    from topa_plugin.features.memory import save_memory
    from topa_plugin.textvid import read_textvid, sample_path, write_jsonl
    from topa_plugin.utils.save_and_load import save_adapter

    expected = 0o666 & ~umask
    memory = save_memory(torch.nn.functional.normalize(torch.randn(4, 8), dim=-1), tmp_path / "memory.safetensors")
    adapter = save_adapter(torch.nn.Linear(2, 2), tmp_path)
    textvid = write_jsonl(tmp_path / "t.jsonl", read_textvid(sample_path())[:1])
    assert {p.name: mode(p) for p in (memory, adapter, textvid)} == {p.name: expected for p in (memory, adapter, textvid)}
