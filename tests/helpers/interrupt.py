"""A training run killed at a chosen step, for resume tests: the callback raises where a job would die."""

from __future__ import annotations

import transformers


class Interrupted(Exception):
    """Stands in for a killed job."""


class InterruptAt(transformers.TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted(f"killed at step {self.step}")
