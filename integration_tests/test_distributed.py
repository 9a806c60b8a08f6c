"""Distributed pre-alignment through the real launchers on CPU: torchrun DDP (two "nodes" on
127.0.0.1 with c10d rendezvous, and one node), and DeepSpeed ZeRO-2 / ZeRO-3 with the shipped
``configs/zero2.json`` / ``zero3.json`` unchanged, 2 ranks each (gloo).

Every run uses the same flags: the shipped 7B recipe (``--config pretrain_llama2_7b``) scaled to the
toy Llama and the 60-record TextVid sample: 2 per device x 3 accumulation x 2 ranks = 12 samples
a step, 5 steps an epoch, 2 epochs, checkpoints at steps 4, 8 and 10; resumed runs start from step 4. The ZeRO-2 run goes through
``configs/pretrain_llama2_7b.sh`` with only the GPU count, the launcher and the paths overridden.
Each launch runs ``tests/helpers/dist_probe.py``, which records per rank the samples drawn and the
final trainables. Runs are module-scoped and shared by the checks (about 6 launches in all).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from topa_plugin.cli import main as topa_main
from topa_plugin.features.store import FeatureStore
from topa_plugin.modeling import TopaForCausalLM
from topa_plugin.textvid import read_textvid, sample_path

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "helpers" / "dist_probe.py"
BIN = Path(sys.executable).parent
ENTRY = "topa_plugin.training.train"
RECORDS, STEPS, MIDDLE = 60, 10, 4
SAMPLES_PER_STEP = 2 * 3  # per rank: per-device batch x accumulation
CHECKPOINTS = (MIDDLE, 2 * MIDDLE, STEPS)  # every --save_steps, and the last step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: list[str], probe_dir: Path, cwd: Path, log: Path, extra_env: dict | None = None):
    """Start one launcher process with the probe's environment (returns the Popen)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOPA_PROBE_DIR": str(probe_dir),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(extra_env or {})}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def finish(processes, logs) -> None:
    for process in processes:
        process.wait(timeout=600)
    for process, log in zip(processes, logs):
        assert process.returncode == 0, f"{log}:\n{log.read_text()[-4000:]}"


def torchrun(*, nnodes: int = 1, nproc: int = 2, rdzv: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if rdzv:
        return command + ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv,
                          "--rdzv_id", "topa-test"]
    return command + ["--master_port", str(free_port())]


def deepspeed_launcher() -> list[str]:
    return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]


@pytest.fixture(scope="module")
def features(tmp_path_factory, toy_clip):
    config_json, weights = toy_clip
    out = tmp_path_factory.mktemp("textvid_features")
    assert topa_main(["features", "textvid", "--textvid", str(sample_path()), "--out", str(out), "--clip-model",
                      str(config_json), "--clip-pretrained", str(weights), "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def flags(toy_llama_dir, features):
    """Paths and the toy scale on top of the shipped recipe (the same for every engine)."""
    return ["--model_name_or_path", str(toy_llama_dir), "--data_path", str(sample_path()),
            "--feature_folder", str(features), "--adapter_layer", "4", "--max_seq_len", "400",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "3", "--num_train_epochs", "2",
            "--save_steps", str(MIDDLE), "--logging_steps", "1", "--bf16", "False", "--dataloader_num_workers", "0",
            "--disable_tqdm", "True"]


class Run:
    """One finished launch: its output directory and what the probe recorded."""

    def __init__(self, out: Path, probe: Path):
        self.out, self.probe = Path(out), Path(probe)

    def rank_trainables(self, rank: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.probe / f"rank{rank}.safetensors"))

    def adapter(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.out / "adapter_model.safetensors"))

    def losses(self) -> dict[int, float]:
        history = json.loads((self.out / "trainer_state.json").read_text())["log_history"]
        return {h["step"]: h["loss"] for h in history if "loss" in h}


def train_args(output_dir, *extra) -> list[str]:
    return [ENTRY, "--config", "pretrain_llama2_7b", "--output_dir", str(output_dir), *extra]


@pytest.fixture(scope="module")
def multinode(tmp_path_factory, flags):
    """Two torchrun agents ("nodes", one rank each), each in its own directory with a relative output dir:
    whatever a rank writes lands on its own node's disk."""
    root = tmp_path_factory.mktemp("multinode")
    rdzv = f"127.0.0.1:{free_port()}"
    logs = [root / f"node{n}.log" for n in range(2)]
    processes = [launch(torchrun(nnodes=2, nproc=1, rdzv=rdzv) + [str(PROBE), *train_args("out", *flags)],
                        root / "probe", root / f"node{n}", logs[n]) for n in range(2)]
    finish(processes, logs)
    ranks = {r: json.loads((root / "probe" / f"rank{r}.json").read_text()) for r in range(2)}
    return Run(Path(ranks[0]["cwd"]) / "out", root / "probe"), ranks


@pytest.fixture(scope="module")
def zero2(tmp_path_factory, flags):
    """ZeRO-2 through the shipped launch script: NUM_GPUS and LAUNCHER overridden, paths as flags."""
    root = tmp_path_factory.mktemp("zero2")
    launcher = " ".join(deepspeed_launcher() + [str(PROBE)])
    log = root / "run.log"
    process = launch(["bash", str(ROOT / "configs" / "pretrain_llama2_7b.sh"), "--output_dir", str(root / "out"),
                      *flags], root / "probe", root, log, {"NUM_GPUS": "2", "LAUNCHER": launcher})
    finish([process], [log])
    return Run(root / "out", root / "probe")


def deepspeed_run(root: Path, config: str, flags, *extra) -> Run:
    log = root / "run.log"
    command = deepspeed_launcher() + [str(PROBE), *train_args(root / "out", "--deepspeed",
                                                             str(ROOT / "configs" / config), *flags, *extra)]
    finish([launch(command, root / "probe", root, log)], [log])
    return Run(root / "out", root / "probe")


@pytest.fixture(scope="module")
def zero3(tmp_path_factory, flags):
    return deepspeed_run(tmp_path_factory.mktemp("zero3"), "zero3.json", flags)


@pytest.fixture(scope="module")
def runs(multinode, zero2, zero3):
    return {"ddp": multinode[0], "zero2": zero2, "zero3": zero3}


def gathered_checkpoint(multinode, root: Path) -> Path:
    """The middle checkpoint as shared storage would hold it: rank 0's files plus every rank's RNG state."""
    run, ranks = multinode
    checkpoint = root / f"checkpoint-{MIDDLE}"
    shutil.copytree(run.out / checkpoint.name, checkpoint)
    for rank, where in ranks.items():
        shutil.copy(Path(where["cwd"]) / "out" / checkpoint.name / f"rng_state_{rank}.pth", checkpoint)
    return checkpoint


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, flags, multinode, zero2, zero3):
    """Each engine resumed from its middle checkpoint into a fresh output dir (DDP on one node this time)."""
    done = {}
    root = tmp_path_factory.mktemp("ddp_resumed")
    checkpoint = gathered_checkpoint(multinode, root / "shared")
    log = root / "run.log"
    command = torchrun() + [str(PROBE), *train_args(root / "out", *flags, "--resume_from_checkpoint", str(checkpoint))]
    finish([launch(command, root / "probe", root, log)], [log])
    done["ddp"] = Run(root / "out", root / "probe")
    for name, run, config in (("zero2", zero2, "zero2.json"), ("zero3", zero3, "zero3.json")):
        done[name] = deepspeed_run(tmp_path_factory.mktemp(f"{name}_resumed"), config, flags,
                                   "--resume_from_checkpoint", str(run.out / f"checkpoint-{MIDDLE}"))
    return done


ENGINES = ["ddp", "zero2", "zero3"]


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_trains_and_its_ranks_agree(runs, engine, features):
    run = runs[engine]
    losses = run.losses()
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(0 < loss < 100 for loss in losses.values())
    rank0, rank1 = run.rank_trainables(0), run.rank_trainables(1)
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    final, middle = run.adapter(), load_file(str(run.out / f"checkpoint-{MIDDLE}" / "adapter_model.safetensors"))
    assert all(torch.equal(final[k], rank0[k]) for k in final)
    assert max((final[k] - middle[k]).abs().max().item() for k in final) > 1e-4  # it kept training

    model = TopaForCausalLM.from_pretrained(run.out)  # whatever engine trained it
    assert all(torch.equal(value, final[f"adapter.{name}"]) for name, value in model.adapter.state_dict().items())
    record = read_textvid(sample_path())[0]
    video = FeatureStore(features).get(record.idx)
    scores = model.score_choices(video, record.qas[0].question, record.qas[0].options, use_memory=False)
    assert scores.shape == (5,) and torch.isfinite(scores).all()


@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_zero_matches_ddp_with_the_same_flags(runs, engine):
    ddp, zero = runs["ddp"].adapter(), runs[engine].adapter()
    assert ddp.keys() == zero.keys()
    gaps = {k: (ddp[k] - zero[k]).abs().max().item() for k in ddp}
    assert max(gaps.values()) <= 1e-5, gaps
    ddp_losses, zero_losses = runs["ddp"].losses(), runs[engine].losses()
    assert zero_losses == pytest.approx(ddp_losses, rel=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_resume_from_the_middle_checkpoint_ends_bit_identical(runs, resumed, engine):
    straight, again = runs[engine], resumed[engine]
    for rank in range(2):  # it trained only the steps after the checkpoint
        drawn = (again.probe / f"samples.rank{rank}.txt").read_text().splitlines()
        assert len(drawn) == (STEPS - MIDDLE) * SAMPLES_PER_STEP
    assert again.losses() == straight.losses()  # the restored history, then the same losses exactly
    final, resumed_final = straight.adapter(), again.adapter()
    assert final.keys() == resumed_final.keys()
    assert all(torch.equal(final[k], resumed_final[k]) for k in final)


def test_two_nodes_write_the_checkpoint_once_from_global_rank_0(multinode):
    run, ranks = multinode
    assert sorted(where["node"] for where in ranks.values()) == [0, 1]
    other = Path(ranks[1]["cwd"]) / "out"
    written = sorted(str(p.relative_to(other)) for p in other.rglob("*") if p.is_file())
    # rank 1 (the other node) writes only its own RNG state, which exact resume needs
    assert written == sorted(f"checkpoint-{step}/rng_state_1.pth" for step in CHECKPOINTS)
    for step in CHECKPOINTS:
        files = {p.name for p in (run.out / f"checkpoint-{step}").iterdir()}
        assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json",
                "rng_state_0.pth"} <= files and "rng_state_1.pth" not in files


def test_two_nodes_split_every_epoch_into_disjoint_covering_shards(multinode):
    run, _ = multinode
    drawn = {}
    for rank in range(2):
        for line in (run.probe / f"samples.rank{rank}.txt").read_text().splitlines():
            epoch, index = map(int, line.split())
            drawn.setdefault((epoch, rank), []).append(index)
    for epoch in range(2):
        shards = [drawn[epoch, rank] for rank in range(2)]
        print(f"epoch {epoch}: rank 0 drew {shards[0]}\nepoch {epoch}: rank 1 drew {shards[1]}")
        assert all(len(shard) == len(set(shard)) == RECORDS // 2 for shard in shards)
        assert not set(shards[0]) & set(shards[1])
        assert set(shards[0]) | set(shards[1]) == set(range(RECORDS))
    assert drawn[0, 0] != drawn[1, 0]  # reshuffled each epoch


def tensor_bytes(path: Path) -> int:
    """Bytes of tensor data in a safetensors file or a torch.save zip, read without unpickling."""
    if path.suffix == ".safetensors":
        with path.open("rb") as f:
            header = int.from_bytes(f.read(8), "little")
        return path.stat().st_size - 8 - header
    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist() if "/data/" in info.filename)


@pytest.mark.parametrize("engine, copies", [("ddp", 3), ("zero2", 5), ("zero3", 5)])
def test_checkpoints_hold_trainables_and_optimizer_state_only(runs, engine, copies, toy_llama_dir):
    """adapter weights (1 copy) + AdamW's two moments; DeepSpeed adds its module copy and fp32 master
    partitions (ZeRO shards of every rank included). The frozen LLM would not fit in that budget."""
    run = runs[engine]
    trainable = sum(t.numel() * 4 for t in run.rank_trainables(0).values())
    frozen = tensor_bytes(Path(toy_llama_dir) / "model.safetensors")
    checkpoint = run.out / f"checkpoint-{MIDDLE}"
    weights = [p for p in checkpoint.rglob("*") if p.suffix in (".safetensors", ".pt") and p.name != "scheduler.pt"]
    stored = sum(tensor_bytes(p) for p in weights)
    assert stored <= copies * trainable * 1.02 < stored + frozen, (stored, trainable, frozen)
    for path in checkpoint.rglob("*model_states.pt"):
        assert set(torch.load(path, weights_only=True)["module"]) <= set(run.rank_trainables(0))
