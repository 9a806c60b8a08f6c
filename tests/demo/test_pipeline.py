"""The demo prints its lmms-eval command so it can be pasted into a shell, paths with spaces included."""

from __future__ import annotations

import shlex
import subprocess

from topa_plugin.demo import pipeline


def test_printed_lmms_eval_command_round_trips_through_the_shell(tmp_path, monkeypatch, capsys):
    out = tmp_path / "my demo"
    (out / "eval").mkdir(parents=True)
    ran = []
    monkeypatch.setattr(pipeline.subprocess, "run",
                        lambda command, **kw: ran.append(command) or subprocess.CompletedProcess(command, 0, "", ""))
    pipeline._run_lmms_eval(out, out / "check point", (out / "clip cfg.json", out / "w.safetensors"),
                            out / "memory.safetensors", out / "tasks dir")
    printed = next(line for line in capsys.readouterr().out.splitlines() if "$ " in line).split("$ ", 1)[1]
    assert shlex.split(printed) == ["lmms-eval", *ran[0][3:]]
    assert str(out / "tasks dir") in shlex.split(printed)
