"""The demo prints its lmms-eval command so it can be pasted into a shell, paths with spaces included, and plots
its two kinds of training steps as two loss series."""

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


def test_loss_plot_draws_multiple_choice_and_caption_steps_as_two_series(tmp_path, monkeypatch):
    """The trainer logs each step's loss under its kind too; one line through both kinds would zigzag."""
    log = [{"loss": 3.0, "loss_multiple_choice": 3.0, "step": 1}, {"loss": 5.0, "loss_caption": 5.0, "step": 2},
           {"loss": 2.9, "loss_multiple_choice": 2.9, "step": 3}, {"loss": 4.8, "loss_caption": 4.8, "step": 4}]
    series = pipeline.loss_series(log)
    assert series == {"multiple-choice batches": ([1, 3], [3.0, 2.9]), "caption batches": ([2, 4], [5.0, 4.8])}
    assert pipeline.loss_series(log[:1]) == {"multiple-choice batches": ([1], [3.0])}  # no empty series drawn

    import matplotlib.axes

    drawn = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **kw: drawn.append((a, kw["label"])) or plot(self, *a, **kw))
    pipeline._plot_losses(series, tmp_path / "loss.png")
    assert [(list(steps), list(losses), label) for (steps, losses), label in drawn] == [
        ([1, 3], [3.0, 2.9], "multiple-choice batches"), ([2, 4], [5.0, 4.8], "caption batches")]
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
