# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""``tstitch serve``: the request checks, the tiles and the frontier, and the page's API served in-process on
127.0.0.1 and called with gradio_client (the digits family, offline)."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
import torch

from tstitch.models.presets import CHECKPOINT_DIR_ENV
from tstitch.plan import Plan
from tstitch.serve import core

pytest.importorskip("gradio", reason="the web extra is not installed (pip install 'tstitch[web]')")
pytest.importorskip("gradio_client", reason="the web extra is not installed (pip install 'tstitch[web]')")

STEPS = 10
ALLOWED = dict(num_models=2, class_conditional=True)


def request(**changes):
    values = dict(model="digits", fractions=["0.4"], steps=STEPS, scheduler="", guidance=1.0, seed=0, num_images=4,
                  labels="0 1 2 3", prompt="")
    values.update(changes)
    return core.parse_request(*values.values(), **ALLOWED)


# -- checks ---------------------------------------------------------------------------------------------------


def test_parse_request_accepts_and_normalises():
    req = request(fractions=["0.2", "0.4", "0.2"], steps=10.0, scheduler="dpm++", labels="3, 4 5")
    assert req.allocations == ((0.2,), (0.4,))
    assert (req.steps, req.scheduler, req.class_labels) == (10, "dpm++", (3, 4, 5))
    assert core.parse_allocation("0.4,0.2", 3) == (0.4, 0.2)


@pytest.mark.parametrize(("changes", "message"), [
    (dict(steps=0), "steps must be in [1, 1000], got 0"),
    (dict(steps=2.5), "steps must be a whole number, got 2.5"),
    (dict(guidance=float("nan")), "guidance must be a finite number >= 0, got nan"),
    (dict(guidance=float("inf")), "guidance must be a finite number >= 0, got inf"),
    (dict(guidance=-1), "guidance must be a finite number >= 0, got -1"),
    (dict(fractions=[]), "choose at least one fraction"),
    (dict(fractions=["1.5"]), "fractions must be in [0, 1] and sum to at most 1, got '1.5'"),
    (dict(fractions=["nan"]), "fractions must be in [0, 1] and sum to at most 1, got 'nan'"),
    (dict(fractions=["0.4,0.2"]), "2 models take 1 comma-separated fractions, got '0.4,0.2'"),
    (dict(labels="one two"), "class labels must be whole numbers separated by spaces, got 'one two'"),
    (dict(scheduler="warp"), "unknown scheduler 'warp'"),
    (dict(num_images=0), "images must be in [1, 64], got 0"),
])
def test_parse_request_refuses_bad_input(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        request(**changes)


def test_preset_availability_offline(tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_DIR_ENV, raising=False)
    available, missing = core.preset_availability(tmp_path, offline=True)
    assert {"digits", "digits-s-b-xl"} <= set(available)
    assert "dit-s-xl" not in available
    assert f"no file dit_s_256.pt in {tmp_path}" in missing["dit-s-xl"]
    assert "facebook/DiT-XL-2-256 is not in the local Hugging Face cache" in missing["dit-s-xl"]
    assert set(available) | set(missing) == set(core.PRESETS)


# -- the page's API -------------------------------------------------------------------------------------------


class OneAtATime:
    """Forward hooks on the large model that count the threads inside it at once."""

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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tstitch.serve.app import make_state, start
    from tstitch.serve.browser import free_port

    folder = tmp_path_factory.mktemp("serve")
    patch = pytest.MonkeyPatch()
    patch.setenv("GRADIO_TEMP_DIR", str(folder / "gradio"))  # the page's image files go here
    frontier = folder / "results.json"
    rows = [{"models": ["digits-s", "digits-xl"], "fractions": [r], "fid": 5 + 10 * r ** 2, "speedup": 1 + r,
             "num_samples": 600} for r in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]  # as the demo writes them
    frontier.write_text(json.dumps({"rows": rows}))
    state, default = make_state(frontier=str(frontier))
    watch = OneAtATime(state.models(default).large)
    app, url = start(state, default, port=free_port())
    yield url, state, watch
    app.close()
    patch.undo()


def call(url, **changes):
    from gradio_client import Client

    values = dict(model="digits", fractions=["0.2", "0.6"], steps=STEPS, scheduler="", guidance=1.0, seed=0,
                  num_images=8, labels="0 1 2 3 4 5 6 7", prompt="")
    values.update(changes)
    return Client(url, verbose=False).predict(*values.values(), api_name="/generate")


def test_page_runs_every_fraction_and_the_large_model_alone(server):
    url, _, _ = server
    assert url.startswith("http://127.0.0.1:")
    gallery, table, frontier, records, note = call(url)
    assert [r["label"] for r in records] == ["digits-xl alone", "digits-s 0.2 + digits-xl 0.8",
                                             "digits-s 0.6 + digits-xl 0.4"]
    assert records[0]["step_models"] == ["digits-xl"] * STEPS
    for record, fraction in zip(records[1:], (0.2, 0.6), strict=True):
        plan = Plan.from_small_fractions(fraction).assignment(STEPS)
        assert record["model_per_step"] == plan
        assert record["step_models"] == [("digits-s", "digits-xl")[i] for i in plan]
        assert record["speedup"] == records[0]["seconds"] / record["seconds"]
    assert len(gallery) == 3
    assert gallery[0]["caption"] == f"digits-xl alone: {records[0]['seconds']:.3f} s (reference)"
    for item, record, r in zip(gallery[1:], records[1:], ("0.2", "0.6"), strict=True):
        assert item["caption"] == f"r {r}: {record['seconds']:.3f} s, {record['speedup']:.2f}x speed-up"
    from PIL import Image

    tile = Image.open(gallery[1]["image"])
    assert tile.width == 4 * 64 + 3 * 2  # 4 columns of the enlarged 8x8 digits
    assert "| digits-s 0.2 + digits-xl 0.8 | digits-s 2, digits-xl 8 |" in table
    assert frontier is not None  # the rows of the frontier file match the loaded pair
    assert note.startswith("Frontier measured in `") and note.endswith("results.json`.")


def test_same_noise_gives_the_same_large_model_images(server):
    url, state, _ = server
    first = call(url, fractions=["0.4"], num_images=2, labels="3")
    second = call(url, fractions=["0.8"], num_images=2, labels="3")
    from PIL import Image

    assert Image.open(first[0][0]["image"]).tobytes() == Image.open(second[0][0]["image"]).tobytes()
    assert Image.open(first[0][1]["image"]).tobytes() != Image.open(second[0][1]["image"]).tobytes()


@pytest.mark.parametrize(("changes", "message"), [
    (dict(steps=0), "steps must be in [1, 1000], got 0"),
    (dict(guidance="nan"), "guidance must be a finite number >= 0, got nan"),
    (dict(labels="0 12"), "class labels must be in [0, 9] for these models, got [12]"),
    (dict(model="dit-s-xl"), "model choice 'dit-s-xl' is not available: DiT-S/2 (T-Stitch release): no file dit_s_256"),
    (dict(model="no-such-preset"), "model choice 'no-such-preset' is not available; available: digits"),
])
def test_bad_input_gives_a_message_and_the_page_keeps_serving(server, changes, message):
    from gradio_client.exceptions import AppError

    url, _, _ = server
    with pytest.raises(AppError, match=re.escape(message)):
        call(url, **changes)
    assert len(call(url, fractions=["0.5"], num_images=1, labels="1", steps=2)[0]) == 2


def test_requests_from_several_tabs_queue(server):
    from gradio_client import Client

    url, _, watch = server
    clients = [Client(url, verbose=False) for _ in range(3)]
    fractions = [["0.1"], ["0.5"], ["0.9"]]
    jobs = [c.submit("digits", f, STEPS, "", 1.0, 0, 8, "0 1 2 3", "", api_name="/generate")
            for c, f in zip(clients, fractions, strict=True)]
    before = watch.calls
    for job, f in zip(jobs, fractions, strict=True):
        records = job.result(timeout=120)[3]
        assert records[1]["model_per_step"] == Plan.from_small_fractions(float(f[0])).assignment(STEPS)
    assert watch.calls > before
    assert watch.most == 1  # never two threads inside the large model at once


def test_plot_frontier_marks_the_fractions_of_the_page(tmp_path):
    rows = [{"models": ["a", "b"], "fractions": [r, 1 - r], "fid": 1 + r, "speedup": 1 + r} for r in (0, 0.5, 1)]
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(rows))
    found = core.load_frontier([tmp_path / "absent.json", path], ["a", "b"])
    assert found == (rows, path)
    assert core.load_frontier([path], ["a", "c"]) is None
    from tstitch.experiments.generate import RunResult

    result = RunResult("stitched", torch.zeros(2, 1, 8, 8), 0.5, ["a", "b"], (0.5, 0.5), [2, 2], [0, 0, 1, 1],
                       [0.2, 0.3])
    run = core.PageRun((0.5,), result, 1.5)
    alone = core.PageRun(None, result, 1.0)
    other = core.PageRun((0.25,), result, 1.2)
    assert core.marked_rows(rows, [alone, run, other], ["a", "b"]) == [None, rows[1], None]
    demo_rows = [dict(row, fractions=row["fractions"][:1]) for row in rows]  # the demo gives the small share only
    assert core.marked_rows(demo_rows, [run], ["a", "b"]) == [demo_rows[1]]
    assert core.plot_frontier(rows, path, [run], ["a", "b"]).size == (640, 360)
    strip = core.tile(run, ["a", "b"]).crop((0, 64 + 2, 130, 64 + 3)).getcolors()
    assert {colour for _, colour in strip} == {core.MODEL_COLOURS[0], core.MODEL_COLOURS[-1], (255, 255, 255)}


def test_cancel_stops_a_request_between_runs_and_frees_the_models(server):
    from gradio_client import Client

    url, _, _ = server
    client = Client(url, verbose=False)
    fractions = [f"{i / 10:g}" for i in range(11)]
    job = client.submit("digits", fractions, 20, "", 1.0, 0, 8, "", "", api_name="/generate")  # short runs
    while not job.outputs():  # the first runs are on the page
        time.sleep(0.05)
    job.cancel()
    while not job.done():
        time.sleep(0.05)
    assert job.status().code.name == "CANCELLED"
    assert len(job.outputs()) < len(fractions)  # one output per run after the first two
    done = call(url, fractions=["0.5"], num_images=1, labels="1", steps=2)  # the lock was released
    assert [r["label"] for r in done[3]] == ["digits-xl alone", "digits-s 0.5 + digits-xl 0.5"]


# -- the command ----------------------------------------------------------------------------------------------


def test_command_refuses_a_preset_without_its_weights(capsys, monkeypatch):
    from tstitch.cli import main

    monkeypatch.delenv(CHECKPOINT_DIR_ENV, raising=False)
    assert main(["serve", "--preset", "dit-s-xl", "--port", "7860"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("tstitch serve: error: model choice 'dit-s-xl' is not available: DiT-S/2")
    assert main(["serve", "--port", "70000"]) == 2
    assert "argument --port: must be an integer in [1, 65535], got 70000" in capsys.readouterr().err
    assert main(["serve", "--device", "cuda:7"]) == 2  # typed like every command's --device
    assert "argument --device" in capsys.readouterr().err


def test_command_serves_on_localhost_and_stops_on_ctrl_c(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    import processes

    from tstitch.serve.browser import free_port

    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path), GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "tstitch.cli", "serve", "--port", str(port)]
    with (
        (tmp_path / "stderr.txt").open("w") as log,  # the log lines ("loading digits")
        processes.child(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True) as process,
    ):
        first = process.stdout.readline()
        assert first.strip() == f"tstitch serve: http://127.0.0.1:{port}/ (digits; Ctrl-C stops it)"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert process.stdout.read().rstrip().endswith("tstitch serve: stopped")
