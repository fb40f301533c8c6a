# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch serve``: the request checks, the timed runs, the tiles and the frontier, and the page's HTTP API
served in-process on 127.0.0.1 and called with gradio_client (the digits family, offline): refusals by name,
the work cap, cancel and abandoned requests, queued requests, plans, and the API example of docs/serve.md."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from tstitch.experiments.timing import Spread
from tstitch.models.presets import CHECKPOINT_DIR_ENV, PRESETS
from tstitch.plan import Plan
from tstitch.serve import views
from tstitch.serve.request import PageRequest, Schedule, parse_allocation, parse_request
from tstitch.serve.runs import PageRun, _result, paired_distance
from tstitch.serve.state import find_tune_plans, preset_availability
from tstitch.tune.cost import CostModel

pytest.importorskip("gradio", reason="the web extra is not installed (pip install 'tstitch[web]')")
pytest.importorskip("gradio_client", reason="the web extra is not installed (pip install 'tstitch[web]')")

STEPS = 6
ALLOWED = dict(num_models=2, class_conditional=True, num_classes=10)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "serve.md"


def request(**changes):
    values = dict(model="digits", fractions=["0.4"], steps=STEPS, scheduler="", guidance=1.0, seed=0, num_images=4,
                  labels="0 1 2 3", prompt="")
    values.update(changes)
    return parse_request(*values.values(), **ALLOWED)


# -- checks ---------------------------------------------------------------------------------------------------


def test_parse_request_accepts_and_normalises():
    req = request(fractions=["0", "0.2", "0.4", "0.2"], steps="10", seed=2**63 - 1, scheduler="dpm++",
                  labels="3, 4 5", guidance="1.5")
    assert req.allocations == ((0.2,), (0.4,))  # 0 is the reference, which always runs, once
    assert [s.label(["s", "xl"]) for s in req.schedules()] == ["r 0 (xl alone)", "r 0.2", "r 0.4"]
    assert (req.steps, req.seed, req.scheduler, req.class_labels, req.guidance) == (10, 2**63 - 1, "dpm++", (3, 4, 5),
                                                                                   1.5)
    assert req.work == 10 * 4 * 3
    assert request(fractions=["0"]).schedules() == [Schedule((0.0,))]
    assert parse_allocation("0.4,0.2", 3) == (0.4, 0.2)


# Every input the page or its API can be handed that it refuses: each names its field, before any work.
REFUSED = [
    (dict(steps=0), "steps must be a whole number in [1, 1000], got 0"),
    (dict(steps=2.5), "steps must be a whole number in [1, 1000], got 2.5"),
    (dict(steps="ten"), "steps must be a whole number in [1, 1000], got 'ten'"),
    (dict(steps=1e9), "steps must be a whole number in [1, 1000], got 1000000000.0"),
    (dict(steps=None), "steps is empty"),
    (dict(num_images=1e9), "images must be a whole number in [1, 64], got 1000000000.0"),
    (dict(num_images=-3), "images must be a whole number in [1, 64], got -3"),
    (dict(num_images=""), "images is empty"),
    (dict(seed=1e30), "seed must be a whole number in [0, 2**63 - 1], got 1e+30"),
    (dict(seed=2**64), f"seed must be a whole number in [0, 2**63 - 1], got {2**64}"),
    (dict(seed=2**63), f"seed must be a whole number in [0, 2**63 - 1], got {2**63}"),
    (dict(seed="18446744073709551616"), "seed must be a whole number in [0, 2**63 - 1], got '18446744073709551616'"),
    (dict(seed=-1), "seed must be a whole number in [0, 2**63 - 1], got -1"),
    (dict(guidance=1e308), "guidance must be a number in [0, 100], got 1e+308"),
    (dict(guidance=float("nan")), "guidance must be a number in [0, 100], got nan"),
    (dict(guidance="inf"), "guidance must be a number in [0, 100], got 'inf'"),
    (dict(guidance=-1), "guidance must be a number in [0, 100], got -1"),
    (dict(guidance="strong"), "guidance must be a number in [0, 100], got 'strong'"),
    (dict(labels="99"), "class labels must be in [0, 9] for these models, got [99]"),
    (dict(labels="-1 3"), "class labels must be in [0, 9] for these models, got [-1]"),
    (dict(labels="one two"), "class labels must be whole numbers separated by spaces, got 'one two'"),
    (dict(labels="1 " * 1_000_000), "class labels: at most 64 (one per image), got 1,000,000"),
    (dict(fractions=[]), "fractions: choose at least one fraction"),
    (dict(fractions=["1.5"]), "fractions must be in [0, 1] and sum to at most 1, got '1.5'"),
    (dict(fractions=["nan"]), "fractions must be in [0, 1] and sum to at most 1, got 'nan'"),
    (dict(fractions=["half"]), "fractions: 'half' is not a number"),
    (dict(fractions=["0.4,0.2"]), "fractions: 2 models take 1 comma-separated shares, got '0.4,0.2'"),
    (dict(fractions=["0.1"] * 101), "fractions must be a list of at most 100 fractions"),
    (dict(scheduler="warp"), "scheduler 'warp' is not offered"),
    (dict(steps=1000, num_images=64, fractions=[f"{i / 10:g}" for i in range(11)]),
     "too much work for one request: steps x images x runs = 1000 x 64 x 11 = 704,000, more than 20,000; ask for "
     "fewer steps, images or fractions"),
]


@pytest.mark.parametrize(("changes", "message"), REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_parse_request_refuses_bad_input_by_name(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        request(**changes)


def test_preset_availability_offline(tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_DIR_ENV, raising=False)
    available, missing = preset_availability(tmp_path, offline=True)
    assert {"digits", "digits-s-b-xl"} <= set(available)
    assert "dit-s-xl" not in available
    assert f"no file dit_s_256.pt in {tmp_path}" in missing["dit-s-xl"]
    assert "facebook/DiT-XL-2-256 is not in the local Hugging Face cache" in missing["dit-s-xl"]
    assert set(available) | set(missing) == set(PRESETS)


def write_tune_folder(folder: Path, sequence: list[int], names: list[str]) -> Path:
    """A folder as ``tstitch tune --out`` leaves it (plan.json beside frontier.json)."""
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps({"version": 1, "num_models": len(names), "names": names,
                                                  "sequence": sequence}))
    (folder / "frontier.json").write_text("{}")
    return folder


def test_tune_plans_are_found_below_the_working_directory_only(tmp_path):
    write_tune_folder(tmp_path / "outputs" / "tune", [0, 0, 1, 1, 1, 1], ["S", "XL"])
    write_tune_folder(tmp_path / ".hidden" / "tune", [0, 1], ["S", "XL"])
    write_tune_folder(tmp_path / "a" / "b" / "c" / "d" / "e", [0, 1], ["S", "XL"])  # deeper than 4 folders
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "plan.json").write_text("{not json")
    (tmp_path / "bad" / "frontier.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "plan.json").write_text("{}")  # not a tune folder (no frontier.json)
    (tmp_path / "linked").symlink_to(tmp_path / "outputs")  # links are not entered
    found = find_tune_plans(tmp_path)
    assert list(found) == ["outputs/tune"]
    assert found["outputs/tune"].sequence == (0, 0, 1, 1, 1, 1)


# -- what the page shows ----------------------------------------------------------------------------------------


def fake_result(allocations=((0.0,), (0.5,), (0.25,)), seconds=((1.0, 1.1, 0.9), (0.5, 0.6, 0.5), (0.95, 1.2, 0.8))):
    from tstitch.experiments.generate import RunResult

    runs = []
    for allocation, times in zip(allocations, seconds, strict=True):
        sequence = Plan.from_small_fractions(list(allocation)).assignment(4)
        images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) + allocation[0]
        result = RunResult("run", images, times[0], ["a", "b"], (allocation[0], 1 - allocation[0]),
                           [sequence.count(0), sequence.count(1)], sequence, [0.1, 0.2])
        runs.append(PageRun(Schedule(allocation), result, ["a", "b"], list(times)))
    request = PageRequest("a", allocations[1:], 4, None, 1.0, 0, 2)
    costs = CostModel((0.01, 0.04), 2, 1.0, "float32", "cpu", 5)

    class Loaded:
        device = torch.device("cpu")

    return _result(runs, request, 3, Loaded(), costs)


def test_times_are_medians_of_paired_repetitions_and_r0_is_the_reference():
    result = fake_result()
    reference, fast, noisy = result.runs
    assert reference.speedup == Spread(1.0, 1.0, 1.0) and not reference.within_noise
    ratios = [r / f for r, f in zip(reference.seconds, fast.seconds, strict=True)]
    assert fast.speedup == Spread(statistics.median(ratios), min(ratios), max(ratios))
    assert fast.time == Spread(0.5, 0.5, 0.6)
    assert not fast.within_noise and noisy.within_noise  # 1.1 / 1.2 < 1 < 1.0 / 0.95 ...
    assert fast.predicted_seconds == pytest.approx(2 * 0.01 + 2 * 0.04)
    assert fast.predicted_speedup == pytest.approx(0.16 / 0.10)
    assert reference.distance == 0 and fast.distance > 0
    assert views.caption(reference) == "r 0 (b alone): 1.000 s, the reference (1.00x)"
    assert views.caption(fast) == "r 0.5: 0.500 s, 1.83x (1.80-2.00)"
    assert views.caption(noisy).endswith(", within noise")
    assert views.caption(fast, partial=True) == "r 0.5: 0.500 s, 1.83x (first repetition)"
    table = views.summary_table(result)
    assert table.count("<tr>") == 4 and "<caption>" in table and "1.00x (reference)" in table
    assert "<code>0011</code>" in table  # the model of every step, a string the page lets wrap
    assert "median of 3 repetitions" in result.timing_text() and " torch thread" in result.timing_text()


def test_paired_distance():
    reference = torch.rand(6, 1, 8, 8)
    assert paired_distance(reference, reference) == 0
    assert 0.5 < paired_distance(reference.roll(1, dims=0), reference) < 1.5  # as unrelated as it gets
    assert paired_distance(reference[:1], reference[:1]) is None


def test_frontier_plot_labels_do_not_overlap_and_mark_the_page(tmp_path):
    rows = [{"models": ["a", "b"], "fractions": [r], "fid": 5 + 40 * r ** 3, "speedup": 1 + 3 * r,
             "num_samples": 600} for r in [i / 10 for i in range(11)]]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rows": rows, "config": {"batch_size": 100}}))
    assert views.load_frontier([tmp_path / "absent.json", path], ["a", "c"]) is None
    frontier = views.load_frontier([tmp_path / "absent.json", path], ["a", "b"])
    assert (frontier.rows, frontier.source, frontier.batch_size, frontier.num_samples) == (rows, path, 100, 600)
    result = fake_result()
    assert views.marked_rows(rows, result.runs, 2) == [rows[0], rows[5], None]
    import matplotlib.pyplot as plt

    figure, labels = views.frontier_figure(frontier, result)
    try:
        renderer = figure.canvas.get_renderer()
        boxes = [label.get_window_extent(renderer) for label in labels]
        assert len(labels) == 11 + 3
        overlaps = [(a.get_text(), b.get_text()) for i, a in enumerate(labels) for b in labels[i + 1:]
                    if a.get_window_extent(renderer).overlaps(b.get_window_extent(renderer))]
        assert not overlaps
        assert all(figure.bbox.contains(box.x0, box.y0) for box in boxes)
        assert figure.axes[0].get_yscale() == "log"
        legend = " ".join(text.get_text() for text in figure.axes[0].get_legend().texts)
        assert "another batch size than the frontier's" in legend
    finally:
        plt.close(figure)
    alt = views.frontier_alt(frontier, result)
    assert alt.startswith("Speed/quality frontier of a -> b from results.json") and "r 0.5: 2.50x, FID 10.0" in alt


def test_tile_strip_and_legend_colours():
    result = fake_result()
    run = result.runs[1]
    strip = views.tile(run).crop((0, 64 + 2, 130, 64 + 3)).getcolors()
    assert {colour for _, colour in strip} == {views.MODEL_COLOURS[0], views.MODEL_COLOURS[-1], (255, 255, 255)}
    assert all(views.contrast_ratio(colour, (255, 255, 255)) >= 4.5 for colour in views.MODEL_COLOURS)
    assert "color:#fff" in views.legend(["a", "b"])


# -- the page's API -------------------------------------------------------------------------------------------


class ModelCalls:
    """Forward hooks on the large model: how many calls, and the most threads inside it at once."""

    def __init__(self, model: torch.nn.Module):
        self.inside, self.most, self.calls, self.lock = 0, 0, 0, threading.Lock()
        model.register_forward_pre_hook(self.enter)
        model.register_forward_hook(self.leave)

    def enter(self, *args):
        with self.lock:
            self.inside += 1
            self.calls += 1
            self.most = max(self.most, self.inside)

    def leave(self, *args):
        with self.lock:
            self.inside -= 1

    def wait_quiet(self, seconds: float = 0.5, timeout: float = 30.0) -> float:
        """Wait until no call came for ``seconds``; returns how long that took."""
        begin = time.monotonic()
        while time.monotonic() - begin < timeout:
            before = self.calls
            time.sleep(seconds)
            if self.calls == before:
                return time.monotonic() - begin
        raise AssertionError(f"the model was still being called after {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from browser import free_port

    from tstitch.serve.app import make_state, start

    folder = tmp_path_factory.mktemp("serve")
    patch = pytest.MonkeyPatch()
    patch.setenv("GRADIO_TEMP_DIR", str(folder / "gradio"))  # the page's image files go here
    (folder / "tmp").mkdir()
    patch.setattr(tempfile, "tempdir", str(folder / "tmp"))  # gradio_client leaves an empty folder per download
    frontier = folder / "results.json"
    rows = [{"models": ["digits-s", "digits-xl"], "fractions": [r], "fid": 5 + 10 * r ** 2, "speedup": 1 + r,
             "num_samples": 600} for r in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]  # as the demo writes them
    frontier.write_text(json.dumps({"rows": rows, "config": {"batch_size": 100}}))
    write_tune_folder(folder / "work" / "outputs" / "tune", [0, 0, 1, 1, 1, 1], ["S", "XL"])
    state, default = make_state(frontier=str(frontier), plans_under=folder / "work")
    watch = ModelCalls(state.models(default).large)
    app, url = start(state, default, port=free_port())
    try:
        yield url, state, watch
    finally:
        app.close()
        patch.undo()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    """Where gradio_client puts the files it receives (its default is the system's temporary folder)."""
    return tmp_path_factory.mktemp("downloads")


def new_client(url, downloads):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(downloads))


@pytest.fixture(scope="module")
def client(server, downloads):
    return new_client(server[0], downloads)


def arguments(**changes):
    values = dict(model="digits", fractions=["0.2", "0.6"], steps=STEPS, scheduler="", guidance=1.0, seed=0,
                  num_images=8, labels="0 1 2 3 4 5 6 7", prompt="", plan_file=None, plan_folder="")
    values.update(changes)
    return list(values.values())


def call(client, **changes):
    return client.predict(*arguments(**changes), api_name="/generate")


def test_page_runs_every_fraction_and_the_reference_with_honest_times(server, client):
    url, _, _ = server
    assert url.startswith("http://127.0.0.1:")
    gallery, table, frontier, records, note, status = call(client, fractions=["0", "0.2", "0.6"])
    runs = records["runs"]
    assert [r["label"] for r in runs] == ["r 0 (digits-xl alone)", "r 0.2", "r 0.6"]  # r 0 is not run twice
    assert runs[0]["step_models"] == ["digits-xl"] * STEPS
    for run, fraction in zip(runs[1:], (0.2, 0.6), strict=True):
        assert run["model_per_step"] == Plan.from_small_fractions(fraction).assignment(STEPS)
        ratios = [r / s for r, s in zip(runs[0]["seconds"], run["seconds"], strict=True)]
        assert run["speedup"] == statistics.median(ratios)  # paired per repetition
        assert (run["speedup_low"], run["speedup_high"]) == (min(ratios), max(ratios))
        assert run["distance"] > 0 and run["predicted_seconds"] < runs[0]["predicted_seconds"]
    assert all(len(r["seconds"]) == 3 for r in runs)
    assert (runs[0]["speedup"], runs[0]["speedup_low"], runs[0]["speedup_high"], runs[0]["distance"]) == (1, 1, 1, 0)
    assert (records["repetitions"], records["batch_size"], records["steps"]) == (3, 8, STEPS)
    assert len(gallery) == 3
    assert gallery[0]["caption"] == f"r 0 (digits-xl alone): {runs[0]['seconds_median']:.3f} s, the reference (1.00x)"
    for item, run in zip(gallery[1:], runs[1:], strict=True):
        assert item["caption"].startswith(f"{run['label']}: {run['seconds_median']:.3f} s, {run['speedup']:.2f}x (")
    from PIL import Image

    assert Image.open(gallery[1]["image"]).width == 4 * 64 + 3 * 2  # 4 columns of the enlarged 8x8 digits
    assert "<td data-label=\"steps per model\">digits-s 1, digits-xl 5</td>" in table
    assert frontier is not None  # the rows of the frontier file match the loaded pair
    assert "the median of 3 repetitions" in note and "each repetition samples all 8 images in one batch" in note
    assert "at batch 100, not this page's batch 8" in note
    assert status.startswith("<p>done: 3 runs x 3 repetitions in ")


def test_same_noise_gives_the_same_large_model_images(client):
    first = call(client, fractions=["0.4"], num_images=2, labels="3", steps=3)
    second = call(client, fractions=["0.8"], num_images=2, labels="3", steps=3)
    from PIL import Image

    assert Image.open(first[0][0]["image"]).tobytes() == Image.open(second[0][0]["image"]).tobytes()
    assert Image.open(first[0][1]["image"]).tobytes() != Image.open(second[0][1]["image"]).tobytes()


# Through HTTP: what gradio_client (or any client) can send that the page itself never would.
REFUSED_BY_API = [
    (dict(steps="ten"), "steps must be a whole number in [1, 1000], got 'ten'"),
    (dict(steps=None), "steps is empty"),
    (dict(num_images=1e9), "images must be a whole number in [1, 64], got 1000000000.0"),
    (dict(num_images=-1), "images must be a whole number in [1, 64], got -1"),
    (dict(seed=1e30), "seed must be a whole number in [0, 2**63 - 1], got 1e+30"),
    (dict(seed=2**64), f"seed must be a whole number in [0, 2**63 - 1], got {2**64}"),
    (dict(guidance=1e308), "guidance must be a number in [0, 100], got 1e+308"),
    (dict(labels="99"), "class labels must be in [0, 9] for these models, got [99]"),
    (dict(labels="-1"), "class labels must be in [0, 9] for these models, got [-1]"),
    (dict(labels="7 " * 1_000_000), "class labels: at most 64 (one per image), got 1,000,000"),
    (dict(fractions=["0.4,0.2"]), "fractions: 2 models take 1 comma-separated shares, got '0.4,0.2'"),
    (dict(model="no-such-preset"), "models: 'no-such-preset' is not offered; offered: digits, digits-s-b-xl, "
     "digits-unet"),
    (dict(model="dit-s-xl"), "models: 'dit-s-xl' is not offered: DiT-S/2 (T-Stitch release): no file dit_s_256"),
    (dict(scheduler="warp"), "scheduler 'warp' is not offered"),
    (dict(plan_folder="/etc"), "plan: '/etc' is not one of the tune folders offered (outputs/tune)"),
    (dict(plan_folder="/nonexistent/plan.json"), "plan: '/nonexistent/plan.json' is not one of the tune folders"),
    (dict(steps=1000, num_images=64, fractions=[f"{i / 10:g}" for i in range(11)]),
     "too much work for one request: steps x images x runs = 1000 x 64 x 11 = 704,000, more than 20,000"),
]


def test_bad_input_through_the_api_is_refused_by_name_with_one_log_line(server, client, capfd, caplog):
    from gradio_client.exceptions import AppError

    _, _, watch = server
    calls = watch.calls
    caplog.set_level(logging.INFO, logger="tstitch.serve.app")
    for changes, message in REFUSED_BY_API:
        with pytest.raises(AppError, match=re.escape(message)):
            call(client, **changes)
    assert watch.calls == calls  # refused before any work
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused: ")]
    assert len(refused) == len(REFUSED_BY_API)
    assert "Traceback" not in capfd.readouterr().err
    runs = call(client, fractions=["0.5"], num_images=1, labels="1", steps=2)[3]["runs"]  # still serving
    assert [r["label"] for r in runs] == ["r 0 (digits-xl alone)", "r 0.5"]


def test_three_model_allocations_need_no_model_choice_first(client):
    runs = call(client, model="digits-s-b-xl", fractions=["0.4,0.2"], num_images=2, labels="1 2", steps=5)[3]["runs"]
    assert [r["label"] for r in runs] == ["r 0,0 (digits-xl alone)", "r 0.4,0.2"]
    assert runs[1]["steps_per_model"] == {"digits-s": 2, "digits-b": 1, "digits-xl": 2}


def test_plans_from_an_upload_or_a_tune_folder_never_a_typed_path(server, client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    picked = call(client, fractions=["0.5"], num_images=2, labels="1", steps=6, plan_folder="outputs/tune")[3]["runs"]
    assert [r["label"] for r in picked] == ["r 0 (digits-xl alone)", "r 0.5", "plan S2 > XL4"]
    assert picked[2]["plan_source"] == "outputs/tune" and picked[2]["model_per_step"] == [0, 0, 1, 1, 1, 1]
    plan = tmp_path / "my-plan.json"
    plan.write_text(json.dumps({"version": 1, "num_models": 2, "sequence": [0, 1, 1, 1]}))
    uploaded = call(client, fractions=[], num_images=1, labels="1", steps=4, plan_file=handle_file(str(plan)))
    assert [r["label"] for r in uploaded[3]["runs"]] == ["r 0 (digits-xl alone)", "plan digits-s1 > digits-xl3"]
    assert uploaded[3]["runs"][1]["plan_source"] == "my-plan.json"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AppError, match=r"^plan file bad\.json: ") as refused:
        call(client, fractions=["0.5"], num_images=1, labels="1", steps=4, plan_file=handle_file(str(bad)))
    assert str(tmp_path) not in str(refused.value) and "gradio" not in str(refused.value)  # no server path
    with pytest.raises(AppError, match=re.escape("the plan S2 > XL4 gives the model of 6 steps, but the run has 4")):
        call(client, fractions=["0.5"], num_images=1, labels="1", steps=4, plan_folder="outputs/tune")


def test_requests_queue_and_twenty_at_once_are_all_served(server, downloads):
    url, _, watch = server
    clients = [new_client(url, downloads) for _ in range(2)]
    jobs = [clients[i % 2].submit(*arguments(fractions=[f"0.{i % 9 + 1}"], num_images=1, labels=str(i % 10),
                                             steps=2), api_name="/generate") for i in range(20)]
    for i, job in enumerate(jobs):
        runs = job.result(timeout=180)[3]["runs"]
        assert runs[1]["model_per_step"] == Plan.from_small_fractions((i % 9 + 1) / 10).assignment(2)
    assert watch.most == 1  # never two threads inside the large model at once


def wait_until_sampling(job, watch, calls_before: int, timeout: float = 60.0) -> None:
    begin = time.monotonic()
    while watch.calls < calls_before + 10:
        assert time.monotonic() - begin < timeout and not job.done(), "the request did not start sampling"
        time.sleep(0.05)


def test_cancel_stops_the_sampling_within_a_step_and_frees_the_models(server, client):
    _, state, watch = server
    before = watch.calls
    job = client.submit(*arguments(fractions=["0.2", "0.5"], steps=150), api_name="/generate")
    wait_until_sampling(job, watch, before)
    job.cancel()
    watch.wait_quiet()
    stopped = watch.calls
    assert stopped - before < 3 * 3 * 150  # far from the whole request
    begin = time.monotonic()
    runs = call(client, fractions=["0.5"], num_images=1, labels="1", steps=2)[3]["runs"]  # the lock was released
    assert [r["label"] for r in runs] == ["r 0 (digits-xl alone)", "r 0.5"]
    assert time.monotonic() - begin < 60


def test_an_abandoned_request_is_dropped(server, downloads):
    """A client that leaves (its event stream closed) stops its work: the model is not called any more, and the
    next small request is served at once."""
    import httpx

    url, _, watch = server
    before = watch.calls
    session = "abandoned-client"
    body = {"data": arguments(fractions=["0.1", "0.3", "0.5", "0.7"], steps=400, num_images=8), "fn_index": None,
            "session_hash": session, "event_data": None, "trigger_id": None}
    with httpx.Client(base_url=url, timeout=30) as http:
        config = http.get("/config").json()  # which event is /generate
        body["fn_index"] = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "generate")
        assert http.post("/gradio_api/queue/join", json=body).status_code == 200
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if "process_generating" in line:  # the request is sampling: the client gives up
                    break
    waited = watch.wait_quiet()
    assert watch.calls - before < 4 * 400 * 3
    begin = time.monotonic()
    new_client(url, downloads).predict(*arguments(fractions=["0.5"], num_images=1, labels="1", steps=2),
                                       api_name="/generate")
    limit = 5.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))  # 5 s on a quiet machine
    assert time.monotonic() - begin < limit, f"the next request took {time.monotonic() - begin:.1f} s"
    assert waited < 10


def test_docs_api_example_runs(server, downloads, monkeypatch):
    import gradio_client

    url, _, _ = server
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    assert 'Client("http://127.0.0.1:7860/")' in code
    original = gradio_client.Client
    monkeypatch.setattr(gradio_client, "Client",
                        lambda address, **options: original(address, verbose=False, download_files=str(downloads)))
    namespace: dict = {}
    exec(code.replace("http://127.0.0.1:7860/", url), namespace)  # noqa: S102 (the docs' own example)
    runs = namespace["records"]["runs"]
    assert [r["label"] for r in runs] == ["r 0 (digits-xl alone)", "r 0.2", "r 0.4"]
    assert len(namespace["gallery"]) == 3 and namespace["status"].startswith("<p>done: ")
    assert math.isfinite(runs[1]["speedup"])


# -- the command ----------------------------------------------------------------------------------------------


def test_command_checks_the_port_before_loading_any_model(capsys, monkeypatch):
    import socket

    import tstitch.serve.app
    from tstitch.cli import main

    def no_models(*args, **kwargs):
        raise AssertionError("models loaded before the port was checked")

    monkeypatch.setattr(tstitch.serve.app, "make_state", no_models)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert capsys.readouterr().err == f"tstitch serve: error: argument --port: {port} is in use on 127.0.0.1; " \
        "choose another --port\n"
    for bad in ("70000", "-1", "0", "'http'"):
        assert main(["serve", "--port", bad.strip("'")]) == 2
        assert f"argument --port: must be an integer in [1, 65535], got {bad}\n" in capsys.readouterr().err
    assert main(["serve", "--host", "no-such-host.invalid", "--port", "7860"]) == 2
    assert "argument --host: 'no-such-host.invalid' is not an address" in capsys.readouterr().err


def test_command_refuses_a_preset_without_its_weights(capsys, monkeypatch):
    from browser import free_port

    from tstitch.cli import main

    monkeypatch.delenv(CHECKPOINT_DIR_ENV, raising=False)
    assert main(["serve", "--preset", "dit-s-xl", "--port", str(free_port())]) == 2
    error = capsys.readouterr().err
    assert error.startswith("tstitch serve: error: models: 'dit-s-xl' is not offered: DiT-S/2")
    assert main(["serve", "--device", "cuda:7"]) == 2  # typed like every command's --device
    assert "argument --device" in capsys.readouterr().err


@pytest.mark.slow
def test_command_serves_on_localhost_and_stops_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    import urllib.request

    import processes
    from browser import free_port

    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path), GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "tstitch.cli", "serve", "--port", str(port)]
    with (
        (tmp_path / "stderr.txt").open("w") as log,  # the log lines ("loading digits")
        processes.child(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True, cwd=tmp_path) as process,
    ):
        first = process.stdout.readline()
        assert first.strip() == f"tstitch serve: http://127.0.0.1:{port}/ (digits; Ctrl-C stops it)"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert process.stdout.read().rstrip().endswith("tstitch serve: stopped")
