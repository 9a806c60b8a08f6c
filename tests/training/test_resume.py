"""Resume after a crash while the newest checkpoint was being written: its damaged file is named and the
previous complete checkpoint is used instead, saying so."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from topa_plugin.training.resume import CheckpointError, checkpoint_problem, resume_checkpoint


def write_checkpoint(root, step: int):
    """The files a Trainer checkpoint of a TOPA run holds (trainables, optimizer, scheduler, RNG, state)."""
    directory = root / f"checkpoint-{step}"
    directory.mkdir(parents=True)
    save_file({"adapter.gate1": torch.randn(2, 4)}, str(directory / "adapter_model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.randn(64)}}}, directory / "optimizer.pt")
    torch.save({"last_epoch": step}, directory / "scheduler.pt")
    torch.save({"python": 1}, directory / "rng_state.pth")
    (directory / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return directory


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"])
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damaged):
    for step in (10, 20, 30):
        write_checkpoint(tmp_path, step)
    assert resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-30")
    truncate(tmp_path / "checkpoint-30" / damaged)
    assert checkpoint_problem(tmp_path / "checkpoint-30").startswith(str(tmp_path / "checkpoint-30" / damaged))
    with caplog.at_level(logging.WARNING, logger="topa_plugin.training.resume"):
        assert resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    text = caplog.text
    assert f"checkpoint-30/{damaged}" in text and "truncated" in text
    assert f"resuming from {tmp_path / 'checkpoint-20'} instead of the newer checkpoint-30" in text


def test_unfinished_checkpoint_without_state_is_skipped(tmp_path):
    write_checkpoint(tmp_path, 5)
    (write_checkpoint(tmp_path, 7) / "trainer_state.json").unlink()
    assert "trainer_state.json: missing" in checkpoint_problem(tmp_path / "checkpoint-7")
    assert resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-5")


def test_no_checkpoint_starts_fresh_but_all_damaged_or_a_damaged_request_fails(tmp_path):
    assert resume_checkpoint(tmp_path / "absent") is None
    assert resume_checkpoint(tmp_path) is None
    truncate(write_checkpoint(tmp_path, 4) / "scheduler.pt")
    with pytest.raises(CheckpointError, match=r"no complete checkpoint to resume from \(checkpoint-4 damaged\)"):
        resume_checkpoint(tmp_path)
    good = write_checkpoint(tmp_path, 2)
    assert resume_checkpoint(tmp_path, str(good)) == str(good)
    with pytest.raises(CheckpointError, match=r"--resume_from_checkpoint .*checkpoint-4: .*scheduler.pt: truncated"):
        resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-4"))
