# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The demo's pieces: interleaved chunked timing, the section summary, the x0 agreement along a trajectory,
the sections, and a tiny two-section run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import DDIMScheduler
from tiny_models import one_thread  # noqa: F401  (fixture)
from torch import nn

from tstitch import zoo
from tstitch.commands.demo import OUTPUTS
from tstitch.experiments import demo_sections
from tstitch.experiments.demo import DemoConfig, format_table, run_demo
from tstitch.experiments.demo_report import summarize_section
from tstitch.experiments.demo_sections import DIT_SECTION, UNET_SECTION, DemoSection, load_sections, section_files
from tstitch.experiments.study import predicted_clean, trajectory_agreement
from tstitch.experiments.timing import Spread, chunk_bounds, ratio_spread, round_robin, run_interleaved, spread
from tstitch.sampling import Guidance, denoise

# -- interleaved timing ---------------------------------------------------------------------------------------


def test_chunk_bounds_cover_the_samples_in_near_equal_parts():
    assert chunk_bounds(600, 3) == [(0, 200), (200, 400), (400, 600)]
    assert chunk_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert chunk_bounds(5, 1) == [(0, 5)]
    for chunks in (0, 6):
        with pytest.raises(ValueError, match=f"chunks must be in \\[1, num_samples=5\\], got {chunks}"):
            chunk_bounds(5, chunks)


def test_round_robin_runs_chunk_one_of_every_schedule_first():
    assert round_robin(3, 2) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_run_interleaved_calls_in_round_robin_order_and_keeps_sample_order():
    calls = []
    clock = iter(range(1, 100))

    def run_chunk(schedule, start, stop):
        calls.append((schedule, start, stop))
        return torch.arange(start, stop).float() + 1000 * schedule, float(next(clock)), [schedule]

    runs = run_interleaved([0, 1, 2], run_chunk, num_samples=6, chunks=3)
    assert calls == [(0, 0, 2), (1, 0, 2), (2, 0, 2), (0, 2, 4), (1, 2, 4), (2, 2, 4), (0, 4, 6), (1, 4, 6),
                     (2, 4, 6)]
    assert [run.schedule for run in runs] == [0, 1, 2]
    assert torch.equal(runs[1].latents, torch.arange(6).float() + 1000)
    assert runs[2].seconds == [3.0, 6.0, 9.0]
    assert runs[2].seconds_per_image == [1.5, 3.0, 4.5]
    assert runs[2].model_per_step == [2]


def test_spread_and_paired_ratio_spread():
    assert spread([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0)
    found = ratio_spread([2.0, 3.0, 8.0], [1.0, 2.0, 4.0])
    assert (found.median, found.low, found.high) == (2.0, 1.5, 2.0)
    with pytest.raises(ValueError, match="as many, got 2 and 3"):
        ratio_spread([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="values is empty"):
        spread([])


# -- the summary ----------------------------------------------------------------------------------------------


def _row(r, fid_ratio, high, seconds, low, top, models=("s", "l")):
    return {"models": list(models), "fractions": [r], "fid": 10 * fid_ratio, "fid_vs_large": fid_ratio,
            "fid_vs_large_low": fid_ratio - 0.02, "fid_vs_large_high": high,
            "seconds_per_image": seconds, "seconds_per_image_low": low, "seconds_per_image_high": top,
            "ideal_seconds_per_image": seconds / 2, "time_vs_large": seconds / 10,
            "time_vs_large_low": low / 10, "time_vs_large_high": top / 10}


def test_summary_names_the_largest_fraction_whose_interval_ends_within_tolerance():
    rows = [
        _row(0.0, 1.0, 1.0, 10.0, 9.5, 10.5),
        _row(0.25, 0.98, 1.01, 8.0, 7.8, 8.2),
        _row(0.5, 1.04, 1.07, 6.0, 5.0, 8.0),   # point within 1.05 but the interval's upper end is not
        _row(0.75, 1.01, 1.049, 4.0, 3.9, 5.5),  # passes, although 0.5 does not
        _row(1.0, 3.0, 3.5, 2.0, 1.9, 2.1),
        _row(0.2, 1.0, 1.0, 1.0, 1.0, 1.0, models=("s", "m", "l")),  # three-model rows are not candidates
    ]
    summary = summarize_section(rows, [0.1, 0.5, 1.0], 0.25)
    point = summary["stitch_point"]
    assert point == {"fraction": 0.75, "fid_vs_large": 1.01, "fid_vs_large_interval": [0.99, 1.049],
                     "time_vs_large": 0.4, "time_vs_large_spread": [0.39, 0.55]}
    assert summary["size_gap_small_over_large"] == pytest.approx(3.0)
    assert summary["time_order"] == {"fraction_step": 0.25, "decreasing_beyond_spread": False,
                                     "overlapping": [[0.25, 0.5], [0.5, 0.75]]}
    assert summary["step_cost_small_over_large"] == pytest.approx(0.1)
    assert summary["measured_over_ideal"] == {"large alone": 2.0, "small alone": 2.0}

    no_interval = [dict(r, fid_vs_large_high=math.nan) for r in rows]
    assert summarize_section(no_interval, [0.1, 1.0], 0.25)["stitch_point"] is None
    with pytest.raises(ValueError, match="from r = 0 to r = 1"):
        summarize_section(rows[:3], [0.1, 1.0], 0.25)


# -- x0 agreement ---------------------------------------------------------------------------------------------


class Affine(nn.Module):
    """eps = a * x + b * label: a tiny class-conditional denoiser with a DiT-like config."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = a, b
        self.config = {"num_embeds_ada_norm": 3}

    def forward(self, x, timestep, class_labels):
        return self.a * x + self.b * class_labels.float().view(-1, 1, 1, 1)


def test_predicted_clean_is_the_ddpm_formula():
    x, eps = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])
    expected = torch.tensor([[(1.0 - 0.6 * 0.5) / 0.8, (2.0 + 0.6) / 0.8]])  # a_t = 0.64
    assert torch.allclose(predicted_clean(x, eps, 0.64), expected)


def test_trajectory_agreement_is_the_formula_along_the_large_models_trajectory():
    scheduler = DDIMScheduler(num_train_timesteps=100, clip_sample=False, set_alpha_to_one=False)
    noise, labels = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2])
    large, small = Affine(0.5, 0.3), Affine(0.2, -0.4)
    found = trajectory_agreement({"small": small, "same": large}, large, scheduler, noise, labels, num_steps=4,
                                 guidance_scale=1.5)
    states = []
    denoise(lambda i: large, scheduler, noise, class_labels=labels, num_inference_steps=4,
            guidance=Guidance(1.5, null_class=3), callback=states.append)
    assert found["small"].timesteps == [float(s["t"]) for s in states] and len(states) == 4
    for k, state in enumerate(states):
        x, alpha_bar = state["x"], scheduler.alphas_cumprod[int(state["t"])]
        guided = [m.a * x + m.b * (3 + 1.5 * (labels - 3)).float().view(-1, 1, 1, 1) for m in (small, large)]
        x0 = [(x - (1 - alpha_bar).sqrt() * e) / alpha_bar.sqrt() for e in guided]
        distance = ((x0[0] - x0[1]).flatten(1).norm(dim=1) / x0[1].flatten(1).norm(dim=1)).mean()
        cosine = torch.nn.functional.cosine_similarity(x0[0].flatten(1), x0[1].flatten(1)).mean()
        eps_cosine = torch.nn.functional.cosine_similarity(guided[0].flatten(1), guided[1].flatten(1)).mean()
        assert found["small"].x0_relative_l2[k] == pytest.approx(float(distance), rel=1e-5)
        assert found["small"].x0_cosine[k] == pytest.approx(float(cosine), rel=1e-5)
        assert found["small"].eps_cosine[k] == pytest.approx(float(eps_cosine), rel=1e-5)
    assert found["same"].x0_relative_l2 == [0.0] * 4
    assert found["same"].x0_cosine == pytest.approx([1.0] * 4)
    v_scheduler = DDIMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="prediction_type must be 'epsilon'"):
        trajectory_agreement({"s": small}, large, v_scheduler, noise, labels, num_steps=2, guidance_scale=1.0)


# -- sections -------------------------------------------------------------------------------------------------


def test_sections_name_their_files_and_the_command_may_write_them_all():
    assert [DIT_SECTION.file(s) for s in ("pareto", "grid")] == ["pareto.png", "grid.png"]
    assert UNET_SECTION.file("pareto") == "pareto-unet.png"
    assert set(section_files()) <= set(OUTPUTS)
    assert DIT_SECTION.model_names == ("digits-s", "digits-b", "digits-xl")
    assert [a.small_fractions for a in DIT_SECTION.three_model(((0.2, 0.3),))] == [(0.2, 0.3)]
    assert UNET_SECTION.three_model(((0.2, 0.3),)) == []
    with pytest.raises(ValueError, match="names a model twice"):
        DemoSection("x", "digits-s", "digits-s")
    with pytest.raises(ValueError, match="slug must be"):
        DemoSection("x", "digits-s", "digits-xl", slug="a/b")


def test_the_unet_section_joins_when_the_pair_is_in_the_zoo_and_is_left_out_without_weights(monkeypatch, tmp_path):
    assert demo_sections.default_sections() == ((DIT_SECTION,) if "digits-unet" not in zoo.FAMILY
                                                else (DIT_SECTION, UNET_SECTION))
    monkeypatch.setattr(zoo, "FAMILY", {**zoo.FAMILY, "digits-unet-s": None, "digits-unet": None})
    assert demo_sections.default_sections() == (DIT_SECTION, UNET_SECTION)
    # a weights folder with the DiT pair only: the optional U-Net section is left out, with the reason
    for name in ("digits-b", "digits-xl"):
        (tmp_path / f"{name}.safetensors").write_bytes((zoo.DEFAULT_WEIGHTS_DIR / f"{name}.safetensors").read_bytes())
    pair = DemoSection("B", "digits-b", "digits-xl")
    loaded, skipped = load_sections((pair, UNET_SECTION), tmp_path, torch.device("cpu"))
    assert [(section, list(models)) for section, models in loaded] == [(pair, ["digits-b", "digits-xl"])]
    assert skipped == [{"name": "U-Net", "reason": f"no weights in {tmp_path}: digits-unet-s, digits-unet"}]
    # corrupted weights of an optional section: left out; of a required one: the loader's error
    (tmp_path / "digits-unet-s.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "digits-unet.safetensors").write_bytes(b"not safetensors")
    monkeypatch.setattr(zoo, "FAMILY", {**zoo.FAMILY, "digits-unet-s": zoo.FAMILY["digits-s"],
                                        "digits-unet": zoo.FAMILY["digits-xl"]})
    _, skipped = load_sections((pair, UNET_SECTION), tmp_path, torch.device("cpu"))
    assert "corrupted or truncated" in skipped[0]["reason"]
    with pytest.raises(FileNotFoundError, match="digits-s.safetensors are missing"):
        load_sections((DIT_SECTION,), tmp_path, torch.device("cpu"))


@pytest.mark.slow
def test_demo_runs_every_section_with_intervals_and_interleaved_times(tmp_path):
    second = DemoSection("B", "digits-b", "digits-xl", slug="b", guidance_scales=(1.0, 1.5))
    config = DemoConfig.quick(num_samples=12, num_steps=2, batch_size=12, guidance_samples=6, timing_chunks=2,
                              similarity_samples=3, interval_groups=4, fraction_step=0.5,
                              three_model=((0.5, 0.5),), sections=(DIT_SECTION, second))
    results = run_demo(tmp_path, config, progress=False)
    written = ["results.json", "results.csv", "pareto.png", "grid.png", "similarity.png", "pareto-b.png",
               "grid-b.png", "similarity-b.png"]
    assert results["files"] == written
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)
    dit, pair = results["sections"]
    assert [s["name"] for s in results["sections"]] == ["DiT", "B"] and results["skipped_sections"] == []
    assert results["config"]["sections"] == ["DiT", "B"] and len(results["load_average"]["end"]) == 3
    assert list(dit["phase_seconds"]) == ["guidance_sweep", "step_costs", "schedules", "scores_and_intervals",
                                          "similarity", "figures"]
    assert [r["schedule"] for r in dit["rows"]] == [
        "digits-s:0 -> digits-xl:1", "digits-s:0.5 -> digits-xl:0.5", "digits-s:1 -> digits-xl:0",
        "digits-s:0.5 -> digits-b:0.5 -> digits-xl:0"]
    assert [r["models"] for r in pair["rows"]] == [["digits-b", "digits-xl"]] * 3
    assert results["rows"] == dit["rows"] + pair["rows"]  # the web page picks its models' rows
    assert dit["guidance_sweep"] == [] and dit["best_guidance"] == 1.0  # one scale: no sweep
    assert [(r["model"], r["guidance"], r["num_samples"]) for r in pair["guidance_sweep"]] == [
        ("digits-xl", 1.0, 6), ("digits-b", 1.0, 6), ("digits-xl", 1.5, 6), ("digits-b", 1.5, 6)]
    for row in results["rows"]:
        assert len(row["seconds_per_image_chunks"]) == 2
        assert row["seconds_per_image_low"] <= row["seconds_per_image"] <= row["seconds_per_image_high"]
        assert row["fid_vs_large_low"] <= row["fid_vs_large_high"]
        assert row["ideal_seconds_per_image"] > 0
    large = dit["rows"][0]
    assert (large["fid_vs_large"], large["fid_vs_large_low"], large["fid_vs_large_high"]) == (1.0, 1.0, 1.0)
    assert large["time_vs_large"] == 1.0 and large["model_per_step"] == [1, 1]
    assert dit["rows"][2]["model_per_step"] == [0, 0]
    assert dit["step_costs"]["models"] == ["digits-s", "digits-b", "digits-xl"]
    curves = dit["similarity"]
    assert list(curves) == ["digits-s vs digits-xl", "digits-b vs digits-xl"]
    assert all(len(curves[k][m]) == 2 for k in curves for m in ("timesteps", "eps_cosine", "x0_cosine",
                                                                   "x0_relative_l2"))
    assert results["targets"] == dit["summary"] and results["similarity"] == curves
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["sections"][1]["rows"][1]["fid"] == pytest.approx(pair["rows"][1]["fid"])
    table = format_table(results)
    assert "== DiT: digits-s / digits-b / digits-xl" in table and "== B: digits-b / digits-xl" in table
    assert table.count("T-Stitch point (largest r whose xFID 95% interval ends <= 1.05)") == 2
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "section" and "model_per_step" not in header and "fid_vs_large_high" in header


def test_demo_refuses_bad_timing_and_interval_settings(tmp_path):
    for overrides, message in (({"timing_chunks": 0}, "timing_chunks must be >= 1, got 0"),
                               ({"guidance_samples": 1}, "guidance_samples must be >= 2, got 1"),
                               ({"interval_groups": 1}, r"interval_groups must be 0 \(no interval\) or >= 2, got 1"),
                               ({"sections": ()}, "sections is empty")):
        with pytest.raises(ValueError, match=message):
            run_demo(tmp_path / "out", DemoConfig.quick(**overrides), progress=False)
    assert not (tmp_path / "out").exists()
