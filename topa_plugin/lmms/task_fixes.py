"""Replacements for lmms-eval 0.7.3 task functions that fail, named by the fixed yamls in ``tasks/``."""

from __future__ import annotations


def perceptiontest_val_process_results_mc_ppl(doc: dict, result) -> dict:
    """lmms-eval's ``perceptiontest_val_process_results_mc_ppl`` plus the ``correct`` field its
    aggregation reads; the prediction is the option with the lowest loss (first on ties)."""
    from lmms_eval.tasks.perceptiontest.val.utils import (
        perceptiontest_val_process_results_mc_ppl,
    )

    record = perceptiontest_val_process_results_mc_ppl(doc, result)
    accuracy = record["accuracy"]
    accuracy["correct"] = int(accuracy["pred_id"] == int(doc["answer_id"]))
    return record
