# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""Plan step counting and the published timestep rule (pure Python, no models)."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from tstitch import Plan, load_plan, save_plan
from tstitch.planfile import plan_from_json, plan_to_dict


def exact_boundaries(small_fractions: list[str], num_steps: int) -> list[int]:
    """The intended boundaries, in exact decimal arithmetic: floor(c_i * N) for cumulative fractions c_i."""
    bounds, cumulative = [0], Fraction(0)
    for fraction in small_fractions:
        cumulative += Fraction(fraction)
        bounds.append(min(num_steps, math.floor(cumulative * num_steps)))
    return [*bounds, num_steps]


# -- boundaries ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "num_steps", "small_steps"),
    [
        (0.4, 10, 4),
        (0.29, 100, 29),  # 0.29 * 100 == 28.999999999999996 in floating point
        (0.3, 10, 3),  # 0.3 * 10 == 3.0000000000000004
        (0.7, 10, 7),  # 0.7 * 10 == 6.999999999999999
        (0.57, 100, 57),  # 0.57 * 100 == 56.99999999999999
        (0.5, 7, 3),  # 3.5 rounds down
        (0.99, 10, 9),
        (0.0, 10, 0),
        (1.0, 10, 10),
        (0.4, 0, 0),
        (0.4, 1, 0),
        (0.5, 1, 0),
        (0.6, 1, 0),
        (1.0, 1, 1),
        (0.4, 250, 100),
    ],
)
def test_two_model_boundaries(fraction, num_steps, small_steps):
    schedule = Plan.from_small_fractions(fraction)
    assert schedule.boundaries(num_steps) == [0, small_steps, num_steps]
    assert schedule.steps_per_model(num_steps) == [small_steps, num_steps - small_steps]
    assert schedule.assignment(num_steps) == [0] * small_steps + [1] * (num_steps - small_steps)


def test_boundaries_match_exact_decimal_arithmetic_on_a_grid():
    """floor(c * N + 1e-6) is floor of the exact decimal product for every percentage and step count."""
    for percent in range(101):
        fraction = f"{percent / 100:.2f}"
        schedule = Plan.from_small_fractions(float(fraction))
        for num_steps in [*range(0, 61), 64, 100, 128, 250, 1000]:
            expected = exact_boundaries([fraction], num_steps)
            assert schedule.boundaries(num_steps) == expected, (fraction, num_steps)


@pytest.mark.parametrize(
    ("fractions", "num_steps", "bounds"),
    [
        ((0.3, 0.3), 10, [0, 3, 6, 10]),
        ((0.1, 0.2), 10, [0, 1, 3, 10]),  # 0.1 + 0.2 == 0.30000000000000004
        ((0.7, 0.1), 10, [0, 7, 8, 10]),  # 0.7 + 0.1 == 0.7999999999999999
        ((0.2, 0.3), 10, [0, 2, 5, 10]),
        ((0.25, 0.25), 6, [0, 1, 3, 6]),  # cumulative: floor(1.5) = 1, floor(3.0) = 3
        ((0.0, 0.5), 10, [0, 0, 5, 10]),
        ((0.5, 0.0), 10, [0, 5, 5, 10]),
        ((0.0, 0.0), 10, [0, 0, 0, 10]),
        ((0.6, 0.4), 10, [0, 6, 10, 10]),  # the small models take everything
        ((1.0, 0.0), 10, [0, 10, 10, 10]),
        ((0.33, 0.33), 100, [0, 33, 66, 100]),
    ],
)
def test_three_model_boundaries(fractions, num_steps, bounds):
    schedule = Plan.from_small_fractions(fractions)
    assert schedule.num_models == 3
    assert schedule.boundaries(num_steps) == bounds
    expected = [i for i in range(3) for _ in range(bounds[i + 1] - bounds[i])]
    assert schedule.assignment(num_steps) == expected
    assert schedule.steps_per_model(num_steps) == [bounds[i + 1] - bounds[i] for i in range(3)]


def test_three_models_match_exact_decimal_arithmetic_on_a_grid():
    for a in range(0, 101, 5):
        for b in range(0, 101 - a, 5):
            fa, fb = f"{a / 100:.2f}", f"{b / 100:.2f}"
            schedule = Plan.from_small_fractions([float(fa), float(fb)])
            for num_steps in (1, 3, 7, 10, 20, 33, 50, 100):
                expected = exact_boundaries([fa, fb], num_steps)
                assert schedule.boundaries(num_steps) == expected, (fa, fb, num_steps)


def test_four_models():
    schedule = Plan.from_small_fractions([0.1, 0.2, 0.3])
    assert schedule.fractions == pytest.approx((0.1, 0.2, 0.3, 0.4))
    assert schedule.assignment(10) == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]


# -- model_index / assignment consistency --------------------------------------------------------------------


@pytest.mark.parametrize("fractions", [0.0, 0.4, 1.0, (0.2, 0.3), (0.0, 1.0), (0.5, 0.5), (0.1, 0.2, 0.3)])
@pytest.mark.parametrize("num_steps", [0, 1, 2, 5, 10, 17])
def test_model_index_agrees_with_assignment(fractions, num_steps):
    schedule = Plan.from_small_fractions(fractions)
    assignment = schedule.assignment(num_steps)
    assert len(assignment) == num_steps
    assert sum(schedule.steps_per_model(num_steps)) == num_steps
    assert [schedule.model_index(step, num_steps) for step in range(num_steps)] == assignment
    assert assignment == sorted(assignment)  # models run in order, each in one contiguous block
    bounds = schedule.boundaries(num_steps)
    assert bounds[0] == 0 and bounds[-1] == num_steps and bounds == sorted(bounds)


def test_model_index_at_the_boundary():
    schedule = Plan.from_small_fractions(0.4)
    assert schedule.model_index(3, 10) == 0
    assert schedule.model_index(4, 10) == 1
    schedule = Plan.from_small_fractions((0.2, 0.3))
    assert [schedule.model_index(s, 10) for s in (0, 1, 2, 4, 5, 9)] == [0, 0, 1, 1, 2, 2]


def test_edges_zero_and_one():
    zero = Plan.from_small_fractions(0)
    assert zero.fractions == (0.0, 1.0)
    assert zero.assignment(10) == [1] * 10  # the large model alone
    one = Plan.from_small_fractions(1)
    assert one.fractions == (1.0, 0.0)
    assert one.assignment(10) == [0] * 10  # the small model alone
    assert one.steps_per_model(10) == [10, 0]


def test_negative_step_count_is_rejected():
    with pytest.raises(ValueError, match="num_steps must be >= 0, got -1"):
        Plan.from_small_fractions(0.4).boundaries(-1)


# -- construction --------------------------------------------------------------------------------------------


def test_from_small_fractions_forms():
    assert Plan.from_small_fractions(0.4).fractions == (0.4, 0.6)
    assert Plan.from_small_fractions([0.4]).fractions == (0.4, 0.6)
    assert Plan.from_small_fractions((0.4,)).fractions == (0.4, 0.6)
    assert Plan.from_small_fractions([]).fractions == (1.0,)
    schedule = Plan.from_small_fractions([0.2, 0.3])
    assert schedule.fractions == (0.2, 0.3, 0.5)
    assert schedule.small_fractions == (0.2, 0.3)
    assert schedule.num_models == 3
    assert str(schedule) == "0.2 -> 0.3 -> 0.5"


@pytest.mark.parametrize("fraction", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), np.array(0.5), 1, True])
def test_numpy_and_torch_scalars_are_one_fraction(fraction):
    schedule = Plan.from_small_fractions(fraction)
    assert schedule.num_models == 2
    assert schedule.fractions[0] == float(fraction)


def test_array_of_fractions():
    schedule = Plan.from_small_fractions(np.array([0.25, 0.25]))
    assert schedule.fractions == (0.25, 0.25, 0.5)


def test_fractions_summing_to_one_with_float_error():
    schedule = Plan.from_small_fractions([0.7, 0.2, 0.1])  # sums to 0.9999999999999999
    assert schedule.num_models == 4
    assert schedule.fractions[-1] == pytest.approx(0.0, abs=1e-12)
    assert schedule.assignment(10) == [0] * 7 + [1] * 2 + [2]
    assert Plan.from_small_fractions([0.6, 0.4]).fractions[-1] == 0.0


@pytest.mark.parametrize(
    ("fractions", "match"),
    [
        (-0.1, r"fractions\[0\] must be in \[0, 1\], got -0\.1"),
        (1.5, r"fractions\[0\] must be in \[0, 1\], got 1\.5"),
        (float("nan"), r"fractions\[0\] must be in \[0, 1\], got nan"),
        (float("inf"), r"fractions\[0\] must be in \[0, 1\], got inf"),
        ([0.2, float("nan")], r"fractions\[1\] must be in \[0, 1\], got nan"),
        ([0.2, -0.5], r"fractions\[1\] .*-0\.5"),
        ("half", r"fractions\[0\] must be a number in \[0, 1\], got 'half'"),
        ([0.2, None], r"fractions\[1\] must be a number .*None"),
        ([0.6, 0.5], r"fractions \(0\.6, 0\.5\) sum to 1\.1, more than 1"),
        ([0.5, 0.5, 0.1], r"sum to 1\.1, more than 1"),
    ],
)
def test_bad_fractions(fractions, match):
    with pytest.raises(ValueError, match=match):
        Plan.from_small_fractions(fractions)


def test_direct_construction_checks_the_fractions():
    assert Plan((0.25, 0.75)).fractions == (0.25, 0.75)
    with pytest.raises(ValueError, match="must sum to 1"):
        Plan((0.25, 0.5))
    with pytest.raises(ValueError, match="at least one model"):
        Plan(())
    with pytest.raises(ValueError, match=r"fractions\[1\] must be in \[0, 1\], got nan"):
        Plan((1.0, float("nan")))
    with pytest.raises(ValueError, match=r"fractions\[0\] must be in \[0, 1\], got -0\.5"):
        Plan((-0.5, 1.5))


def test_schedule_is_immutable():
    schedule = Plan.from_small_fractions(0.4)
    with pytest.raises(AttributeError):
        schedule.fractions = (0.5, 0.5)
    assert Plan.from_small_fractions(0.4) == schedule
    assert hash(Plan.from_small_fractions(0.4)) == hash(schedule)


# -- the published timestep rule -----------------------------------------------------------------------------


def test_timestep_rule_two_models():
    fractions = (0.4, 0.6)  # small model while t / T >= 0.6
    assert Plan(tuple(fractions)).model_at_timestep(999, 1000) == 0
    assert Plan(tuple(fractions)).model_at_timestep(600, 1000) == 0
    assert Plan(tuple(fractions)).model_at_timestep(599, 1000) == 1
    assert Plan(tuple(fractions)).model_at_timestep(0, 1000) == 1
    assert [Plan((0.0, 1.0)).model_at_timestep(t, 1000) for t in (1000, 999, 0)] == [0, 1, 1]
    assert [Plan((1.0, 0.0)).model_at_timestep(t, 1000) for t in (999, 1, 0)] == [0, 0, 0]


def test_timestep_rule_keeps_the_published_float_tie():
    # 1 - 0.7 == 0.30000000000000004 > 300 / 1000: the published rule gives t = 300 to the large model
    assert Plan((0.7, 0.3)).model_at_timestep(300, 1000) == 1
    assert Plan((0.7, 0.3)).model_at_timestep(301, 1000) == 0


def test_timestep_rule_three_models():
    fractions = (0.3, 0.3, 0.4)
    expected = {999: 0, 701: 0, 699: 1, 400: 1, 399: 2, 0: 2}
    assert {t: Plan(tuple(fractions)).model_at_timestep(t, 1000) for t in expected} == expected


@pytest.mark.parametrize("tenths", [0, 1, 2, 3, 4, 5, 6, 8, 9, 10])  # 7: the float tie above
def test_timestep_rule_agrees_with_step_counting_on_even_timesteps(tenths):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)  # 900, 800, ..., 0
    schedule = Plan.from_small_fractions(tenths / 10)
    by_timestep = [Plan(tuple(schedule.fractions)).model_at_timestep(int(t), 1000) for t in scheduler.timesteps]
    assert by_timestep == schedule.assignment(10)


# -- per-step plans ------------------------------------------------------------------------------------------


def test_sequence_plan_reads_back_step_by_step():
    plan = Plan.from_sequence([0, 0, 1, 2, 2, 1], names=["S", "B", "XL"])
    assert plan.is_sequence and plan.num_models == 3 and plan.num_steps == 6
    assert plan.assignment(6) == [0, 0, 1, 2, 2, 1]
    assert [plan.model_index(step, 6) for step in range(6)] == [0, 0, 1, 2, 2, 1]
    assert plan.steps_per_model(6) == [2, 2, 2]
    assert plan.segments() == [(0, 2), (1, 1), (2, 2), (1, 1)]
    assert str(plan) == "S2 > B1 > XL2 > B1"
    assert str(Plan.from_sequence([2, 2, 0, 0, 0])) == "2x2 > 0x3"  # large first, no names
    assert Plan.from_segments([(0, 2), (1, 1), (2, 2), (1, 1)], names=["S", "B", "XL"]) == plan
    assert Plan.from_segments([(0, 8), (1, 12)]).assignment(20) == [0] * 8 + [1] * 12
    assert Plan.from_sequence(np.array([0, 1, 1])).sequence == (0, 1, 1)  # numpy integers are fine
    assert Plan.from_sequence([0, 0], num_models=2).steps_per_model(2) == [2, 0]  # the large model unused


def test_fraction_plans_keep_their_text_and_segments():
    plan = Plan.from_small_fractions([0.2, 0.3])
    assert str(plan) == "0.2 -> 0.3 -> 0.5" and not plan.is_sequence and plan.num_steps is None
    assert plan.segments(10) == [(0, 2), (1, 3), (2, 5)]
    with pytest.raises(ValueError, match="a fraction plan needs num_steps"):
        plan.segments()


def test_a_sequence_plan_refuses_another_step_count():
    plan = Plan.from_sequence([0, 1, 1])
    for call in (plan.model_index, plan.assignment, plan.steps_per_model):
        with pytest.raises(ValueError, match=r"gives the model of 3 steps, but the run has num_steps=4"):
            call(*((0, 4) if call == plan.model_index else (4,)))
    with pytest.raises(ValueError, match=r"is a per-step sequence and has no fractions"):
        _ = plan.small_fractions


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Plan.from_sequence([]), "sequence must not be empty"),
        (lambda: Plan.from_sequence([0, 1.5]), r"sequence\[1\] must be a model index \(an integer\), got 1.5"),
        (lambda: Plan.from_sequence([0, True]), r"sequence\[1\] must be a model index \(an integer\), got True"),
        (lambda: Plan.from_sequence([0, "1"]), r"sequence\[1\] must be a model index \(an integer\), got '1'"),
        (lambda: Plan.from_sequence([0, -1]), r"sequence\[1\] is -1, not a model index: the plan has 1 models"),
        (lambda: Plan.from_sequence([0, 3], num_models=2), r"sequence\[1\] is 3, not a model index: .* \(0..1\)"),
        (lambda: Plan.from_sequence("012"), "sequence must be a list of model indices, got '012'"),
        (lambda: Plan.from_sequence([0, 1], num_models=0), "num_models must be an integer >= 1, got 0"),
        (lambda: Plan.from_sequence([0, 1], names=["S"]), r"names must be 2 non-empty strings .* got \('S',\)"),
        (lambda: Plan.from_segments([(0, 2), (1,)]), r"segments\[1\] must be a \(model_index, num_steps\) pair"),
        (lambda: Plan.from_segments([(0, 2), (1, -1)]), r"segments\[1\] step count must be an integer >= 0"),
        (lambda: Plan.from_segments([(0, 2), (1, 1.5)]), r"segments\[1\] step count must be an integer >= 0"),
        (lambda: Plan(), "a plan needs either fractions or a sequence, not both or neither"),
        (lambda: Plan((1.0,), sequence=(0,)), "a plan needs either fractions or a sequence, not both or neither"),
        (lambda: Plan(()), "fractions must not be empty"),
        (lambda: Plan((0.5, 0.5), model_count=3), "num_models is 3 but there are 2 fractions"),
    ],
)
def test_sequence_plan_validation(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- JSON ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan",
    [
        Plan.from_small_fractions(0.4),
        Plan.from_small_fractions([0.1, 0.29], names=["S", "B", "XL"]),
        Plan.from_sequence([0, 0, 1, 2, 2, 1], names=["S", "B", "XL"]),
        Plan.from_sequence([1, 1, 0], num_models=3),
    ],
)
def test_json_round_trip(plan, tmp_path):
    assert plan_from_json(json.dumps(plan_to_dict(plan))) == plan
    path = save_plan(plan, tmp_path / "plan.json")
    assert load_plan(path) == plan
    assert json.loads(path.read_text())["version"] == 1
    with pytest.raises(FileExistsError, match="exists; not overwriting"):
        save_plan(plan, path)


def test_plan_json_form():
    assert plan_to_dict(Plan.from_sequence([0, 1], names=["S", "XL"])) == {
        "version": 1, "num_models": 2, "names": ["S", "XL"], "sequence": [0, 1]
    }
    assert plan_to_dict(Plan.from_small_fractions(0.25)) == {
        "version": 1, "num_models": 2, "fractions": [0.25, 0.75]
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "plan is not valid JSON"),
        ("[1, 2]", "a plan must be a JSON object, got list"),
        ('{"num_models": 2, "sequence": [0, 1]}', "version must be 1, got None"),
        ('{"version": 2, "num_models": 2, "sequence": [0, 1]}', "version must be 1, got 2"),
        ('{"version": 1, "sequence": [0, 1]}', "num_models must be an integer >= 1, got None"),
        ('{"version": 1, "num_models": "2", "sequence": [0, 1]}', "num_models must be an integer >= 1, got '2'"),
        ('{"version": 1, "num_models": 2}', "exactly one of the fields fractions and sequence"),
        ('{"version": 1, "num_models": 2, "sequence": [0, 1], "fractions": [0.5, 0.5]}', "exactly one of the fields"),
        ('{"version": 1, "num_models": 2, "sequence": [0, 1], "extra": 1}', r"unknown plan field\(s\) \['extra'\]"),
        ('{"version": 1, "num_models": 2, "sequence": []}', "sequence must not be empty"),
        ('{"version": 1, "num_models": 2, "sequence": "01"}', "sequence must be a list of model indices"),
        ('{"version": 1, "num_models": 2, "sequence": [0, 2]}', r"sequence\[1\] is 2, not a model index"),
        ('{"version": 1, "num_models": 2, "sequence": [0, 1.0]}', r"sequence\[1\] must be a model index"),
        ('{"version": 1, "num_models": 2, "sequence": [0, 1], "names": "S"}', "names must be a list of strings"),
        ('{"version": 1, "num_models": 2, "sequence": [0, 1], "names": ["S"]}', "names must be 2 non-empty strings"),
        ('{"version": 1, "num_models": 2, "fractions": [1.0]}', r"fractions must be a list of 2 numbers"),
        ('{"version": 1, "num_models": 2, "fractions": [0.5, "0.5"]}', "fractions must be numbers"),
        ('{"version": 1, "num_models": 2, "fractions": [0.5, 0.6]}', "fractions must sum to 1"),
        ('{"version": 1, "num_models": 2, "fractions": [1.5, -0.5]}', r"fractions\[0\] must be in \[0, 1\]"),
    ],
)
def test_plan_json_validation(text, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        plan_from_json(text)
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}: .*"):
        load_plan(path)


def test_load_plan_checks_the_step_count_and_the_file(tmp_path):
    path = save_plan(Plan.from_sequence([0, 1, 1]), tmp_path / "plan.json")
    assert load_plan(path, num_steps=3).num_steps == 3
    with pytest.raises(ValueError, match="sequence has 3 steps, but num_steps is 5"):
        load_plan(path, num_steps=5)
    assert load_plan(save_plan(Plan.from_small_fractions(0.4), tmp_path / "f.json"), num_steps=5).num_models == 2
    with pytest.raises(FileNotFoundError, match="plan file .*missing.json does not exist"):
        load_plan(tmp_path / "missing.json")
