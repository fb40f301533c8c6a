# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The ``tstitch serve`` page: a Gradio app over :mod:`tstitch.serve.core`.

Gradio is an optional extra (``pip install tstitch[web]``) and is imported only here, when a page is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from . import core
from .core import CUSTOM, PageRun, ServeState

logger = logging.getLogger(__name__)

__all__ = ["build_app", "make_state", "start", "use_one_thread_for_tiny_models"]

GALLERY_LABEL = ("the same seeds at each fraction r of the steps on the small model; times: single warm runs of "
                 "all the images; speed-up: against the large model alone")
#: Models with fewer parameters than this run on one CPU thread (as in ``tstitch sample``).
TINY = 10_000_000

#: The API name of the generate event: gradio_client calls it with ``client.predict(..., api_name="/generate")``.
GENERATE_API = "generate"


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network
    try:
        import gradio
    except ImportError as error:
        raise ImportError("tstitch serve needs Gradio: pip install 'tstitch[web]'") from error
    return gradio


def make_state(preset: str | None = None, models: Sequence[str] | None = None, *, device: str = "cpu",
               checkpoint_dir: str | None = None, frontier: str | None = None) -> tuple[ServeState, str]:
    """The server's state and the model choice the page opens with; the default choice is loaded here, so
    an unusable ``preset`` or ``models`` fails before the server starts."""
    available, missing = core.preset_availability(checkpoint_dir)
    files = (frontier,) if frontier else core.FRONTIER_FILES
    if frontier and not os.path.isfile(frontier):
        raise FileNotFoundError(f"--frontier {frontier}: no such file")
    state = ServeState(available, missing, list(models) if models else None, device, checkpoint_dir, files)
    if preset and models:
        raise ValueError("give --preset or --model, not both")
    default = CUSTOM if models else (preset or core.DEFAULT_PRESET)
    if default not in state.choices and default not in missing:
        raise ValueError(f"unknown preset {default!r}; known presets: {', '.join([*available, *missing])}")
    state.models(default)  # ValueError naming the reason for a preset whose weights are missing
    return state, default


def _choice_settings(state: ServeState, name: str) -> dict[str, Any]:
    loaded = state.models(name)
    names = list(loaded.names)
    defaults = loaded.defaults
    class_conditional = loaded.kind == "class"
    if len(names) == 2:
        fractions = [f"{i / 10:g}" for i in range(11)]
        chosen = ["0.2", "0.4", "0.6"]
    else:
        fractions = [",".join(f"{f:g}" for f in a) for a in ((0.2, 0.2), (0.3, 0.3), (0.4, 0.2), (0.2, 0.5))]
        chosen = fractions[:3]
    default_labels = " ".join(str(y) for y in defaults.class_labels[:8]) if class_conditional else ""
    return {"names": names, "class_conditional": class_conditional, "fractions": fractions, "chosen": chosen,
            "steps": defaults.num_steps or 50, "guidance": 1.0 if defaults.guidance_scale is None
            else defaults.guidance_scale, "scheduler": defaults.scheduler or "", "labels": default_labels,
            "prompt": defaults.prompt or "", "num_images": 8}


def _missing_text(state: ServeState) -> str:
    if not state.missing:
        return ""
    lines = [f"- **{name}**: {reason}" for name, reason in state.missing.items()]
    return "Not offered (weights not at hand):\n" + "\n".join(lines)


def build_app(state: ServeState, default: str):
    """The page (a ``gradio.Blocks``); its generate event runs one request at a time."""
    gr = _gradio()
    settings = _choice_settings(state, default)
    schedulers = [("the preset's", "")] + [(name, name) for name in core.scheduler_names()]

    with gr.Blocks(title="tstitch serve", analytics_enabled=False) as app:
        gr.Markdown("## tstitch: trajectory stitching\nA small model runs the first, noisy fraction of the "
                    "denoising steps and the large model the rest. Every fraction and the large model alone start "
                    "from the same noise; times are single warm runs on this machine.")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                model = gr.Dropdown(state.choices, value=default, label="models", elem_id="model",
                                    allow_custom_value=True)  # an API call naming a missing preset gets its reason
                with gr.Accordion(f"not offered: {len(state.missing)} presets without their weights", open=False,
                                  visible=bool(state.missing)):
                    gr.Markdown(_missing_text(state), elem_id="missing")
                fractions = gr.CheckboxGroup(settings["fractions"], value=settings["chosen"], elem_id="fractions",
                                             label="fractions of the steps on the small model(s)")
                with gr.Row():
                    steps = gr.Number(settings["steps"], label="steps", elem_id="steps")
                    guidance = gr.Number(settings["guidance"], label="guidance", elem_id="guidance")
                with gr.Row():
                    seed = gr.Number(0, label="seed", elem_id="seed")
                    num_images = gr.Number(settings["num_images"], label="images", elem_id="images")
                scheduler = gr.Dropdown(schedulers, value=settings["scheduler"], label="scheduler",
                                        elem_id="scheduler")
                labels = gr.Textbox(settings["labels"], label="class labels (repeated to fill the images)",
                                    visible=settings["class_conditional"], elem_id="labels")
                prompt = gr.Textbox(settings["prompt"], label="prompt", visible=not settings["class_conditional"],
                                    elem_id="prompt")
                plan = gr.Textbox("", label="plan file (optional): a plan.json or a `tstitch tune --out` folder, "
                                  "sampled as one more run", elem_id="plan")
                with gr.Row():
                    run_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel_button = gr.Button("Cancel", elem_id="cancel")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label=GALLERY_LABEL, columns=2, format="png", object_fit="contain",
                                     elem_id="gallery", height="auto")
                legend = gr.HTML(core.legend(settings["names"]), elem_id="legend")
                table = gr.Markdown(elem_id="table")
                frontier = gr.Image(label="speed/quality frontier", type="pil", elem_id="frontier",
                                    interactive=False)
                frontier_note = gr.Markdown(elem_id="frontier-note")
                with gr.Accordion("the runs as JSON", open=False):
                    records = gr.JSON(elem_id="records")

        def on_model(name: str):
            try:
                with state.lock:
                    new = _choice_settings(state, name)
            except (ValueError, OSError) as error:
                raise gr.Error(str(error)) from None
            return (gr.update(choices=new["fractions"], value=new["chosen"]), new["steps"], new["guidance"],
                    new["scheduler"], gr.update(value=new["labels"], visible=new["class_conditional"]),
                    gr.update(value=new["prompt"], visible=not new["class_conditional"]),
                    core.legend(new["names"]))

        def on_generate(name, chosen, steps_value, scheduler_value, guidance_value, seed_value, images_value,
                        labels_value, prompt_value, plan_value=None,
                        progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
            try:
                with state.lock:
                    loaded = state.models(name)
                request = core.parse_request(
                    name, chosen or [], steps_value, scheduler_value, guidance_value, seed_value, images_value,
                    labels_value, prompt_value, num_models=len(loaded.names),
                    class_conditional=loaded.kind == "class", plan=plan_value)
                runs_iter = core.run_request(loaded, request, lambda done, total, desc: progress((done, total),
                                                                                                   desc=desc))
                tiles: list[tuple[Any, str]] = []
                while True:
                    with state.lock:  # held while sampling, never across a yield
                        runs = next(runs_iter, None)
                    if runs is None:
                        return
                    for run in runs[len(tiles):]:
                        tiles.append((core.tile(run, loaded.names), core.caption(run)))
                    done = len(runs) == request.num_runs
                    plot, note = _frontier(state, loaded.names, runs) if done else (None, "")
                    yield (list(tiles), core.summary_table(runs, loaded.names), plot, [run.as_dict() for run in runs],
                           note)
            except (ValueError, OSError) as error:
                raise gr.Error(str(error)) from None

        model.change(on_model, model, [fractions, steps, guidance, scheduler, labels, prompt, legend],
                     concurrency_limit=1, concurrency_id="models", api_name="choose_models")
        event = run_button.click(
            on_generate, [model, fractions, steps, scheduler, guidance, seed, num_images, labels, prompt, plan],
            [gallery, table, frontier, records, frontier_note], concurrency_limit=1, concurrency_id="models",
            api_name=GENERATE_API,
        )
        cancel_button.click(None, None, None, cancels=[event], api_name="cancel")
    return app


def use_one_thread_for_tiny_models(state: ServeState, default: str) -> None:
    """One torch thread on a CPU for models under 10M parameters, as ``tstitch sample`` does (threads only add
    overhead there, and a shared machine's cores thrash)."""
    import torch

    large = state.models(default).large
    if large.device.type == "cpu" and sum(p.numel() for p in large.parameters()) < TINY:
        torch.set_num_threads(1)


def _frontier(state: ServeState, names: Sequence[str], runs: Sequence[PageRun]):
    found = core.load_frontier(state.frontier_files, names)
    if found is None:
        return None, (f"No measured frontier of {' -> '.join(names)} in {', '.join(state.frontier_files)}: "
                      "`tstitch demo` (the digits family) or `tstitch tune` writes one.")
    rows, source = found
    return core.plot_frontier(rows, source, runs, names), f"Frontier measured in `{source}`."


def start(state: ServeState, default: str, host: str = "127.0.0.1", port: int = 7860):
    """Build the page and serve it in the background; returns the app (``app.close()`` stops it) and its URL."""
    app = build_app(state, default)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=True,
               footer_links=["api"])
    return app, app.local_url
