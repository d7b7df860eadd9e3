"""The cost guard: a training step's counted costs (bench/costs.py) against the committed
baseline bench/costs.json, and proof that the guard catches what it is for.

A failure prints a table of old / new / change naming each counter that rose. If the rise is
intended, ``python bench/costs.py --update`` rewrites the baseline (review its diff).
"""
import dataclasses
import os
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
# bench/ holds scripts that import each other as top-level modules. Appended, not prepended:
# bench/profile.py must not shadow the standard library's `profile`.
if BENCH not in sys.path:
    sys.path.append(BENCH)

import costs  # noqa: E402
from cost_counters import CPU_ATTENTION_FLOPS, counting  # noqa: E402
from lmsrr.methods.lmsrr import LMSRR  # noqa: E402

LATER_STEP = "default/lmsrr/step-task2"


@pytest.fixture(scope="module")
def baseline():
    return costs.load_baseline()


def _failure(bad, rows, baseline) -> str:
    sync_ops = {k: v.get("sync_ops") for k, v in rows.items()}
    return ("counted costs rose above bench/costs.json:\n" + costs.format_changes(bad, sync_ops)
            + "\n" + costs.version_note(baseline)
            + "\nIf the rise is intended: python bench/costs.py --update, and commit the diff.")


def test_step_costs_within_the_baseline(baseline):
    """Every row but the released formulation's (a reference for the ratios, not guarded code):
    the paper's step under FakeTensorMode, the default job's, every method's, the compiled top."""
    rows = costs.count_all(released=False)
    bad = costs.regressions(baseline, rows, complete=False)
    assert not bad, _failure(bad, rows, baseline)


def _recount_later_step(baseline):
    rows = costs.count_all(only=[LATER_STEP], released=False)
    assert set(rows) == {LATER_STEP}
    return costs.regressions(baseline, rows, complete=False)


def test_guard_names_a_new_host_sync(monkeypatch, baseline):
    loss = LMSRR.loss

    def loss_with_item(self, batch, noise=None):
        out = loss(self, batch, noise)
        out.loss.item()  # one host sync per step: what the guard must catch
        return out

    monkeypatch.setattr(LMSRR, "loss", loss_with_item)
    bad = _recount_later_step(baseline)
    assert [(c.row, c.counter) for c in bad] == [(LATER_STEP, "syncs")], costs.format_changes(bad)
    assert "syncs" in costs.format_changes(bad) and "REGRESSION" in costs.format_changes(bad)


def test_guard_names_an_extra_forward(monkeypatch, baseline):
    loss = LMSRR.loss

    def loss_with_extra_forward(self, batch, noise=None):
        out = loss(self, batch, noise)
        ((_, logits),) = self.top(self.net.prefix(batch.x_aug))  # one more forward of the batch
        return dataclasses.replace(out, loss=out.loss + 0.0 * logits.sum())

    monkeypatch.setattr(LMSRR, "loss", loss_with_extra_forward)
    bad = _recount_later_step(baseline)
    named = {c.counter for c in bad if c.row == LATER_STEP}
    assert {"flops", "ops", "saved_bytes"} <= named, costs.format_changes(bad)


def _rows(**counters):
    return {"rows": {"r/m/step": dict(counters)}}


def test_tolerances():
    old = _rows(flops=1000, ops=100, saved_bytes=1000, syncs=0)
    same = costs.regressions(old, _rows(flops=1010, ops=105, saved_bytes=1010, syncs=0)["rows"])
    assert same == []  # at the limits
    bad = costs.regressions(old, _rows(flops=1011, ops=106, saved_bytes=1011, syncs=1)["rows"])
    assert sorted(c.counter for c in bad) == ["flops", "ops", "saved_bytes", "syncs"]
    assert costs.regressions(old, _rows(flops=10, ops=1, saved_bytes=1, syncs=0)["rows"]) == []
    table = costs.format_changes(bad)
    assert "r/m/step" in table and "+1.10% (limit +1%)" in table and "new" in table


def test_a_row_without_baseline_or_gone_fails_a_complete_count():
    old = {"rows": {"a/m/step": {"ops": 1}, "b/m/step": {"ops": 1}}}
    new = {"a/m/step": {"ops": 1}, "c/m/step": {"ops": 1}}
    assert {c.row for c in costs.regressions(old, new)} == {"b/m/step", "c/m/step"}
    # a partial count (some rows only) compares the rows it counted
    assert {c.row for c in costs.regressions(old, new, complete=False)} == {"c/m/step"}


def _registered(formula):
    def counted(*args, **kwargs):
        return formula(*args, **kwargs)

    counted._get_raw = True  # already takes shapes: FlopCounterMode must not wrap it again
    return counted


def test_flops_are_those_of_torchs_flop_counter(tmp_path):
    run = costs.Run(costs.config_for(costs.Setting("default")), str(tmp_path))
    run.start_task(0)
    run.step()  # the buffer fills: the next two steps have the same shapes
    with counting() as ours:
        run.step()
    torchs = FlopCounterMode(display=False,
                             custom_mapping={k: _registered(v) for k, v in CPU_ATTENTION_FLOPS.items()})
    with torchs:
        run.step()
    assert ours.flops == torchs.get_total_flops() > 0


def test_fake_tensor_counts_match_real_ones(tmp_path):
    """The paper's rows are counted under FakeTensorMode; at the default job's size the same
    counts on real tensors agree (FLOPs exactly; a few layout fix-ups differ in the ops)."""
    found = {}
    for fake in (False, True):
        cfg = costs.config_for(costs.Setting("default")).replace(runtime={"precision": "bf16"})
        run = costs.Run(cfg, str(tmp_path / str(fake)), fake=fake)
        run.start_task(0)
        run.step()
        run.end_task(0)
        run.start_task(1)
        found[fake] = costs.count_step(run)
    real, fake = found[False], found[True]
    assert fake["flops"] == real["flops"]
    assert fake["syncs"] == real["syncs"] == 0
    assert fake["ops"] == pytest.approx(real["ops"], rel=0.01)
    assert fake["saved_bytes"] == pytest.approx(real["saved_bytes"], rel=0.01)
    for k in ("param_bytes", "trainable_bytes", "method_state_bytes", "optimizer_bytes"):
        assert fake[k] == real[k], k


def test_host_reads_without_an_operator_are_counted():
    t = torch.arange(3.0)
    with counting() as c:
        t.tolist()
        t.numpy()
        t[t > 0]
        (t.sum() > 0).item()
    assert c.sync_ops == {"Tensor.tolist": 1, "Tensor.numpy": 1, "aten.index.Tensor (boolean mask)": 1,
                          "aten._local_scalar_dense.default": 1}
