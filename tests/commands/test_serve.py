"""``topa serve``'s flags: --auth as a pair or a file, loopback detection, and one error line (exit 2) for
each bad setting, reported before the model loads."""

from __future__ import annotations

import socket

import pytest

from tests.helpers.serve_process import free_port
from topa_plugin.cli import main
from topa_plugin.commands.serve import is_loopback, read_auth


def test_auth_is_a_pair_or_a_file_of_pairs(tmp_path):
    assert read_auth(None) is None
    assert read_auth("ann:pw:with:colons") == [("ann", "pw:with:colons")]
    users = tmp_path / "users.txt"
    users.write_text("# who may use the demo\nann:one\n\nbob:two\n")
    assert read_auth(str(users)) == [("ann", "one"), ("bob", "two")]


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.org", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def _serve(capsys, *args) -> str:
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("topa serve: error: ")
    return err[0]


def test_bad_settings_fail_in_one_line_before_loading(tmp_path, capsys):
    missing = str(tmp_path / "no-checkpoint")  # never reached: each check comes before loading
    users = tmp_path / "users.txt"
    users.write_text("ann:one\nbob\n")
    assert "--auth nobody: expected USER:PASSWORD" in _serve(capsys, "--checkpoint", missing, "--auth", "nobody")
    assert f"--auth {users} line 2: expected USER:PASSWORD" in _serve(capsys, "--checkpoint", missing, "--auth", str(users))
    assert "holds no video" in _serve(capsys, "--checkpoint", missing, "--examples", str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        line = _serve(capsys, "--checkpoint", missing, "--port", port)
    assert f"--host 127.0.0.1 --port {port}: cannot listen there" in line
    assert "no-checkpoint: folder not found" in _serve(capsys, "--checkpoint", missing, "--port", str(free_port()))
