"""Restricted loading of release pickles: what the release needs loads, code-running pickles never run."""

from __future__ import annotations

import argparse
import collections
import functools
import pickle

import numpy as np
import pytest
import torch

from tests.helpers.release_fixtures import write_malicious_memory
from topa_plugin.utils import safeload
from topa_plugin.utils.safeload import UnsafePickleError, load_release_pickle


def _dump(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_plain_pickle_of_tensor_like_memory_pkl(tmp_path, protocol):
    memory = torch.randn(37, 16).half()
    loaded = load_release_pickle(_dump(tmp_path / "memory.pkl", memory, protocol))
    assert loaded.dtype == torch.float16 and torch.equal(loaded, memory)


def test_plain_pickle_of_allowed_containers(tmp_path):
    value = {
        "view": torch.arange(12.0).view(3, 4)[1:],  # non-zero storage offset
        "param": torch.nn.Parameter(torch.ones(2)),
        "array": np.arange(5, dtype=np.float32),
        "scalar": np.float64(2.5),
        "ordered": collections.OrderedDict(b=1, a=[1, 2, (3, "x")]),
        "args": argparse.Namespace(adapter_len=50, llama2=True),
    }
    loaded = load_release_pickle(_dump(tmp_path / "mix.pkl", value))
    assert torch.equal(loaded["view"], value["view"])
    assert isinstance(loaded["param"], torch.nn.Parameter) and torch.equal(loaded["param"], value["param"])
    assert np.array_equal(loaded["array"], value["array"]) and loaded["array"].dtype == np.float32
    assert loaded["scalar"] == 2.5
    assert loaded["ordered"] == value["ordered"] and isinstance(loaded["ordered"], collections.OrderedDict)
    assert loaded["args"] == value["args"]


def test_torch_zip_with_namespace_and_parameters(tmp_path):
    state = {"model": {"gate": torch.nn.Parameter(torch.randn(1, 4, 1, 1))}, "epoch": 3,
             "args": argparse.Namespace(adapter_layer=32, bias=3.5)}
    torch.save(state, tmp_path / "checkpoint_3.pth")
    for mmap in (False, True):
        loaded = load_release_pickle(tmp_path / "checkpoint_3.pth", mmap=mmap)
        assert torch.equal(loaded["model"]["gate"], state["model"]["gate"])
        assert loaded["args"] == state["args"] and loaded["epoch"] == 3


def test_legacy_torch_format(tmp_path):
    torch.save({"w": torch.randn(3, 3)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert load_release_pickle(tmp_path / "old.pth")["w"].shape == (3, 3)


def test_the_malicious_payload_is_live(tmp_path):
    """Guards the tests below: unrestricted pickle.load really runs the payload."""
    marker = tmp_path / "ran"
    path = write_malicious_memory(tmp_path / "memory.pkl", marker)
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("smuggle_storage", [False, True], ids=["os.system", "via-_load_from_bytes"])
def test_plain_pickle_that_runs_code_is_refused(tmp_path, smuggle_storage):
    marker = tmp_path / "ran"
    path = write_malicious_memory(tmp_path / "memory.pkl", marker, smuggle_storage=smuggle_storage)
    with pytest.raises(UnsafePickleError, match=r"memory\.pkl.*system"):
        load_release_pickle(path)
    assert not marker.exists()


def test_torch_zip_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {}, "x": _RunsCode(marker)}, tmp_path / "checkpoint_1.pth")
    with pytest.raises(UnsafePickleError, match=r"checkpoint_1\.pth.*system"):
        load_release_pickle(tmp_path / "checkpoint_1.pth")
    assert not marker.exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "obj, refused",
    [
        (collections.Counter(a=1), "collections.Counter"),
        (functools.partial(print, 1), "functools.partial"),
        ({1, 2}.__class__, "builtins.set"),
    ],
)
def test_other_globals_are_refused(tmp_path, obj, refused):
    with pytest.raises(UnsafePickleError) as info:
        load_release_pickle(_dump(tmp_path / "x.pkl", obj))
    assert str(tmp_path / "x.pkl") in str(info.value) and refused in str(info.value)


def test_garbage_is_an_unpickling_error_naming_the_file(tmp_path):
    path = tmp_path / "memory.pkl"
    path.write_bytes(pickle.dumps(torch.randn(4, 4))[:-20])
    with pytest.raises(pickle.UnpicklingError, match="memory.pkl") as info:
        load_release_pickle(path)
    assert not isinstance(info.value, UnsafePickleError)


def _build_on_global(module: str, name: str, attribute: str, value_ops: bytes) -> bytes:
    """Protocol-2 ops: push the global module.name, then BUILD it with slot state {attribute: value}
    (pickle's BUILD falls back to setattr, so a plain restricted unpickler rewrites the global)."""
    key = attribute.encode()
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"N}X" + len(key).to_bytes(4, "little") + key
            + value_ops + b"s\x86b.")


@pytest.mark.parametrize(
    "module, name, attribute, value_ops, target",
    [
        ("argparse", "Namespace", "__init__", b"cnumpy\ndtype\n", lambda: argparse.Namespace.__init__),
        ("torch._utils", "_rebuild_tensor_v2", "__defaults__", b"}\x85",
         lambda: torch._utils._rebuild_tensor_v2.__defaults__),
        ("_codecs", "encode", "__defaults__", b"X\x05\x00\x00\x00utf-8\x85",
         lambda: safeload._latin1_encode.__defaults__),
    ],
    ids=["Namespace-class", "torch-rebuild-defaults", "codecs-defaults"],
)
def test_build_cannot_rewrite_an_allowed_global(tmp_path, module, name, attribute, value_ops, target):
    """BUILD on an allow-listed class or function would change it for the whole process
    (every later argparse parser, every later torch.load); it must be refused untouched."""
    before = target()
    path = tmp_path / "poison.pkl"
    path.write_bytes(_build_on_global(module, name, attribute, value_ops))
    with pytest.raises(UnsafePickleError, match=rf"poison\.pkl.*{name}"):
        load_release_pickle(path)
    assert target() is before
    assert load_release_pickle(_dump(tmp_path / "ok.pkl", [torch.ones(2), b"\xff"], 2))[1] == b"\xff"


def test_tensor_with_backward_hooks_is_refused(tmp_path):
    """torch never saves hooks (always an empty OrderedDict); a non-empty one would run on backward."""
    storage = torch.ones(2)._typed_storage()  # the storage object a plain pickle of a tensor holds
    hooks = collections.OrderedDict(h=argparse.Namespace)
    rebuilt = (torch._utils._rebuild_tensor_v2, (storage, 0, (2,), (1,), False, hooks))

    class _Hooked:
        def __reduce__(self):
            return rebuilt

    with pytest.raises(UnsafePickleError, match=r"hooked\.pkl.*backward hooks"):
        load_release_pickle(_dump(tmp_path / "hooked.pkl", _Hooked()))
