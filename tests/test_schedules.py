"""Sparsity schedules: values at start/middle/end, monotone, bounded, update points, validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_compress.schedules import (
    ConstantSchedule,
    CubicSchedule,
    ExponentialSchedule,
    LinearSchedule,
    MultiStepSchedule,
    PolynomialSchedule,
    SparsitySchedule,
    make_schedule,
)


def test_cubic_matches_zhu_gupta_formula():
    s = PolynomialSchedule(start=2, end=12, frequency=1, power=3)
    for t in [2, 3, 5.5, 7, 11, 12]:
        expected = 0.9 + (0.1 - 0.9) * (1 - (t - 2) / 10) ** 3
        assert s.target(t, final=0.9, initial=0.1) == pytest.approx(expected, abs=1e-12)
    assert s.target(0, final=0.9, initial=0.1) == 0.1  # before start: initial
    assert s.target(2, final=0.9) == 0.0  # start: initial (default 0)
    assert s.target(7, final=0.9) == pytest.approx(0.9 * (1 - 0.5**3))  # middle
    assert s.target(12, final=0.9) == pytest.approx(0.9)  # end
    assert s.target(50, final=0.9) == pytest.approx(0.9)  # after end: held


def test_named_schedules_start_middle_end():
    lin = make_schedule("linear", start=0, end=4)
    assert isinstance(lin, LinearSchedule)
    assert [lin.target(t, 0.8) for t in (0, 2, 4)] == pytest.approx([0.0, 0.4, 0.8])
    cub = make_schedule("cubic", start=0, end=4)
    assert isinstance(cub, CubicSchedule) and cub.power == 3
    assert cub.target(2, 0.8) == pytest.approx(0.8 * 0.875)
    exp = make_schedule("exponential", start=0, end=4)
    assert isinstance(exp, ExponentialSchedule)
    # density halves... geometric mean of densities 1 and 0.04 at the middle
    assert exp.target(0, 0.96) == pytest.approx(0.0)
    assert exp.target(2, 0.96) == pytest.approx(1 - math.sqrt(0.04))
    assert exp.target(4, 0.96) == pytest.approx(0.96)
    const = make_schedule("constant", start=3)
    assert isinstance(const, ConstantSchedule)
    assert [const.target(t, 0.7) for t in (0, 2.99, 3, 10)] == [0.0, 0.0, 0.7, 0.7]
    assert const.update_points() == [3.0]
    assert make_schedule("one_shot", start=1).target(1, 0.5) == 0.5


def test_multistep_absolute_milestones_and_scaling():
    s = make_schedule({1: 0.5, 3: 0.8, 5: 0.9})
    assert isinstance(s, MultiStepSchedule)
    assert [s(t) for t in (0, 1, 2.5, 3, 4.9, 5, 9)] == pytest.approx([0, 0.5, 0.5, 0.8, 0.8, 0.9, 0.9])
    assert s.update_points() == [1.0, 3.0, 5.0]
    assert s.update_point(4.2) == 3.0 and s.update_point(0.5) is None
    assert s.should_update(3) and not s.should_update(3.5)
    # a layer with final 0.45 follows the same shape, scaled
    assert s.target(3, final=0.45) == pytest.approx(0.4)


def test_update_points_fractional_epochs_and_end_included():
    s = LinearSchedule(start=0.5, end=2.0, frequency=0.4)
    assert s.update_points() == pytest.approx([0.5, 0.9, 1.3, 1.7, 2.0])
    assert s.update_point(0.49) is None
    assert s.update_point(0.5) == pytest.approx(0.5)
    assert s.update_point(1.29999) == pytest.approx(0.9)
    assert s.update_point(1.3) == pytest.approx(1.3)  # no float drift past a boundary
    assert s.update_point(1.99) == pytest.approx(1.7)
    assert s.update_point(2.0) == 2.0 and s.update_point(100) == 2.0
    # target held between update points
    assert s.target_at_update(1.5, final=0.8) == pytest.approx(s.target(1.3, final=0.8))


def test_step_unit_should_update_tfmot_semantics():
    s = PolynomialSchedule(start=100, end=1000, frequency=100, unit="step", final_sparsity=0.9)
    assert [t for t in range(0, 1200, 50) if s.should_update(t)] == list(range(100, 1001, 100))
    assert s(1000) == pytest.approx(0.9) and s(100) == 0.0
    default = LinearSchedule(start=0, end=95, unit="step")
    assert default.frequency == 9  # DEFAULT_UPDATES updates, whole steps


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["cubic", "linear", "exponential", "polynomial"]),
    start=st.floats(0, 5),
    length=st.floats(0.1, 20),
    initial=st.floats(0, 0.5),
    final=st.floats(0.5, 0.99),
)
def test_monotone_and_bounded(name, start, length, initial, final):
    s = make_schedule(name, start=start, end=start + length, initial_sparsity=initial)
    ts = [start - 1 + i * (length + 2) / 200 for i in range(201)]
    values = [s.target(t, final=final) for t in ts]
    assert all(initial - 1e-12 <= v <= final + 1e-12 for v in values)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert s.target(start + length, final=final) == pytest.approx(final)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(start=-1, end=2), "start"),
        (dict(start=3, end=2), "end"),
        (dict(start=0, end=2, frequency=0), "frequency"),
        (dict(start=0, end=2, unit="minute"), "unit"),
        (dict(start=0, end=2, initial_sparsity=1.5), "initial_sparsity"),
        (dict(start=0, end=2, final_sparsity=-0.1), "final_sparsity"),
        (dict(start=0, end=2, initial_sparsity=0.5, final_sparsity=0.2), "final_sparsity"),
        (dict(start=0, end=10.5, unit="step"), "end"),
        (dict(start=0, end=2, power=0), "power"),
    ],
)
def test_validation_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolynomialSchedule(**kwargs)


def test_validation_other_schedules():
    with pytest.raises(ValueError, match="milestones"):
        MultiStepSchedule({})
    with pytest.raises(ValueError, match="milestones"):
        MultiStepSchedule({1: 0.8, 2: 0.5})
    with pytest.raises(ValueError, match=r"milestones\[2\]"):
        MultiStepSchedule({1: 0.5, 2: 1.5})
    with pytest.raises(ValueError, match="schedule must be one of"):
        make_schedule("quartic", start=0, end=1)
    with pytest.raises(ValueError, match="final"):
        ExponentialSchedule(start=0, end=1).target(0.5, final=1.0)
    with pytest.raises(ValueError, match="final_sparsity is not set"):
        LinearSchedule(start=0, end=1)(0.5)
    with pytest.raises(NotImplementedError):
        SparsitySchedule(start=0, end=1, final_sparsity=0.5)(0.5)


def test_schedule_object_passes_through_and_repr():
    s = CubicSchedule(start=1, end=3, final_sparsity=0.5)
    assert make_schedule(s) is s
    assert "CubicSchedule(" in repr(s) and "power=3.0" in repr(s)


def test_errors_are_the_packages_config_error_naming_the_argument():
    from lightning_compress.errors import CompressionConfigError
    from lightning_compress.schedules.events import EventSchedule

    with pytest.raises(CompressionConfigError, match="PolynomialSchedule: start must be"):
        PolynomialSchedule(start=True, end=2)  # a bool is not a number
    with pytest.raises(CompressionConfigError, match="unit must be one of"):
        EventSchedule(unit="minute")
    with pytest.raises(CompressionConfigError, match="^interval must be an int >= 0"):
        EventSchedule(interval=1.5)
    with pytest.raises(CompressionConfigError, match="milestones keys must be numbers.*'late'"):
        MultiStepSchedule({"late": 0.5})  # a YAML key that is no number: a clean error, not float()'s
    assert MultiStepSchedule({"1": 0.5, 2: 0.8}).milestones == {1.0: 0.5, 2.0: 0.8}  # "1" from a CLI is fine


def test_last_progress_of_a_fit():
    from lightning_compress.schedules.reach import last_progress

    # 8 batches per epoch; the last batch of 3 epochs starts at epoch 2 + 7/8
    assert last_progress("epoch", 8, max_epochs=3) == pytest.approx(2 + 7 / 8)
    assert last_progress("step", 8, max_epochs=3) == 23
    assert last_progress("step", 8, max_epochs=3, max_steps=10) == 9  # steps 0..9
    assert last_progress("epoch", 8, max_epochs=3, max_steps=10) == pytest.approx(9 / 8)
    # accumulate 3: an epoch of 8 batches is 3 steps (the last group of 2 still steps)
    assert last_progress("step", 8, accumulate=3, max_steps=4) == 3
    assert last_progress("epoch", 8, accumulate=3, max_steps=4) == pytest.approx(10 / 8)  # batches 8-10: step 4
    assert last_progress("epoch", float("inf"), max_epochs=3) is None
    assert last_progress("epoch", 8) is None
