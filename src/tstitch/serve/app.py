# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The ``tstitch serve`` page: a Gradio app over :mod:`tstitch.serve.state` and :mod:`tstitch.serve.views`.

Gradio is an optional extra (``pip install tstitch[web]``) and is imported only here, when a page is built.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tstitch.planfile import load_plan

from . import views
from .request import parse_request, scheduler_names
from .runs import PageResult
from .state import CUSTOM, DEFAULT_PRESET, FRONTIER_FILES, RequestJob, ServeState, find_tune_plans, preset_availability

logger = logging.getLogger(__name__)

__all__ = ["build_app", "make_state", "start", "use_one_thread_for_tiny_models", "GENERATE_API", "PAGE_CSS"]

#: Models with fewer parameters than this run on one CPU thread (as in ``tstitch sample``).
TINY = 10_000_000
#: The API name of the generate event: gradio_client calls it with ``client.predict(..., api_name="/generate")``.
GENERATE_API = "generate"
#: How often the page's progress line is refreshed while a request samples (seconds).
POLL_SECONDS = 0.1
#: The largest plan file the page takes (a 1,000-step plan is about 10 KB).
MAX_UPLOAD = "1mb"
README = Path(__file__).resolve().parents[3] / "README.md"  # in a source checkout

#: Layout rules Gradio's components do not have: the model-per-step string wraps, the gallery shows every tile
#: without scrolling inside itself, captions wrap below the pictures, and on a narrow screen each table row
#: stacks its cells (each with its column's name).
PAGE_CSS = """
#gallery .grid-wrap { max-height: none !important; height: auto !important; overflow: visible !important; }
#gallery .grid-container { height: auto !important; padding-top: 0 !important; }
#gallery > label[data-testid="block-label"] { position: static !important; max-width: 100%; white-space: normal; }
#gallery .gallery-item { height: auto !important; }
#gallery .thumbnail-item { aspect-ratio: auto !important; height: auto !important; display: flex !important;
  flex-direction: column !important; overflow: visible !important; }
#gallery .thumbnail-item img { width: 100% !important; height: auto !important; image-rendering: pixelated; }
#gallery .caption-label { position: static !important; white-space: normal !important;
  overflow: visible !important; text-overflow: clip !important; max-width: 100% !important;
  transform: none !important; margin: 0 !important; text-align: left; }
.model-swatch { padding: 1px 6px; border-radius: 3px; }
table.runs { width: 100%; border-collapse: collapse; font-size: 0.9em; }
table.runs caption { text-align: left; padding-bottom: 4px; }
table.runs th, table.runs td { border: 1px solid var(--border-color-primary); padding: 3px 5px; vertical-align: top; }
table.runs td code { overflow-wrap: anywhere; word-break: break-all; white-space: normal; }
@media (max-width: 720px) {
  table.runs thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  table.runs, table.runs caption, table.runs tbody, table.runs tr, table.runs td {
    display: block; width: 100%; box-sizing: border-box; }
  table.runs tr { margin-bottom: 8px; border: 1px solid var(--border-color-primary); }
  table.runs td { border: none; border-bottom: 1px solid var(--border-color-primary); }
  table.runs td::before { content: attr(data-label) ": "; font-weight: 600; }
}
"""


#: Makes the progress line a live region (announced by screen readers); Gradio gives its HTML no attributes.
PAGE_HEAD = """<script>
new MutationObserver(() => {
  const status = document.getElementById("status");
  if (status && !status.hasAttribute("role")) {
    status.setAttribute("role", "status");
    status.setAttribute("aria-live", "polite");
  }
}).observe(document.documentElement, {childList: true, subtree: true});
</script>"""


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network
    try:
        import gradio
    except ImportError as error:
        raise ImportError("tstitch serve needs Gradio: pip install 'tstitch[web]'") from error
    return gradio


def make_state(preset: str | None = None, models: Sequence[str] | None = None, *, device: str = "cpu",
               checkpoint_dir: str | None = None, frontier: str | None = None,
               plans_under: str | os.PathLike | None = None) -> tuple[ServeState, str]:
    """The server's state and the model choice the page opens with; the default choice is loaded here, so
    an unusable ``preset`` or ``models`` fails before the server starts. The tune plans offered are those
    under ``plans_under`` (default: the working directory)."""
    available, missing = preset_availability(checkpoint_dir)
    files = (frontier,) if frontier else FRONTIER_FILES
    if frontier and not os.path.isfile(frontier):
        raise FileNotFoundError(f"--frontier {frontier}: no such file")
    if preset and models:
        raise ValueError("give --preset or --model, not both")
    plans = find_tune_plans(Path.cwd() if plans_under is None else plans_under)
    state = ServeState(available, missing, list(models) if models else None, device, checkpoint_dir, files, plans)
    default = CUSTOM if models else (preset or DEFAULT_PRESET)
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
        fractions = ["0,0"] + [",".join(f"{f:g}" for f in a) for a in ((0.2, 0.2), (0.3, 0.3), (0.4, 0.2), (0.2, 0.5))]
        chosen = fractions[1:4]
    default_labels = " ".join(str(y) for y in defaults.class_labels[:8]) if class_conditional else ""
    return {"names": names, "class_conditional": class_conditional, "fractions": fractions, "chosen": chosen,
            "steps": defaults.num_steps or 50, "guidance": 1.0 if defaults.guidance_scale is None
            else defaults.guidance_scale, "scheduler": defaults.scheduler or "", "labels": default_labels,
            "prompt": defaults.prompt or "", "num_images": 8, "plans": state.plans_for(len(names))}


def _missing_text(state: ServeState) -> str:
    if not state.missing:
        return ""
    lines = [f"- **{name}**: {reason}" for name, reason in state.missing.items()]
    return "Not offered (weights not at hand):\n" + "\n".join(lines)


def _examples(state: ServeState) -> list[tuple[str, str, list[str], int]]:
    """Three requests one click away: (button text, model choice, fractions, steps)."""
    examples = [("digits, r 0.2 / 0.4 / 0.6, 25 steps", DEFAULT_PRESET, ["0.2", "0.4", "0.6"], 25),
                ("the U-Net pair, r 0.3 / 0.5", "digits-unet", ["0.3", "0.5"], 25)]
    if "digits-s-b-xl" in state.choices:
        examples.append(("three models, 0.4,0.2 and 0.2,0.5", "digits-s-b-xl", ["0.4,0.2", "0.2,0.5"], 25))
    else:
        examples.append(("digits, r 0.5 of 100 steps", DEFAULT_PRESET, ["0.5"], 100))
    return [example for example in examples if example[1] in state.choices]


def _refuse(gr: Any, error: BaseException) -> Exception:
    """A rejected input: one log line and the message on the page (no traceback in the server's log)."""
    message = str(error) or type(error).__name__
    logger.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


def _plan_choice(state: ServeState, upload: Any, picked: Any, num_models: int) -> tuple[Any, str | None]:
    """The plan of an uploaded file or of a tune folder picked from the closed list (never a typed path)."""
    if upload and picked:
        raise ValueError("plan: upload a plan file or pick a tune folder, not both")
    if picked:
        if not isinstance(picked, str) or picked not in state.tune_plans:
            offered = ", ".join(state.tune_plans) or "none"
            raise ValueError(f"plan: {str(picked)[:80]!r} is not one of the tune folders offered ({offered})")
        plan, source = state.tune_plans[picked], picked
    elif upload:
        path = Path(upload if isinstance(upload, str) else getattr(upload, "path", "") or upload.get("path", ""))
        source = path.name
        try:
            plan = load_plan(path)
        except (OSError, ValueError, RecursionError) as error:
            text = str(error).replace(str(path), source) if not isinstance(error, RecursionError) else "nested too deep"
            raise ValueError(f"plan file {source}: {text}") from None
    else:
        return None, None
    if plan.num_models != num_models:
        raise ValueError(f"plan {source} is for {plan.num_models} models, these are {num_models}")
    return plan, source


def _checked_by_the_page(component: Any) -> Any:
    """Hand the component's value to the page's own checks, which name the field (Gradio's own check of a
    dropdown or a checkbox group refuses a value outside the choices in its own words, with a traceback in the
    log; the API also takes any allocation, three-model ones too, without choosing the models first)."""
    component.preprocess = _as_sent
    return component


def _as_sent(payload: Any) -> Any:
    return payload


def build_app(state: ServeState, default: str):
    """The page (a ``gradio.Blocks``); its generate event runs one request at a time."""
    gr = _gradio()

    settings = _choice_settings(state, default)
    schedulers = [("the preset's", "")] + [(name, name) for name in scheduler_names()]
    readme = f"[the README](/gradio_api/file={README})" if README.is_file() else "the project's README"

    with gr.Blocks(title="tstitch serve", analytics_enabled=False) as app:
        gr.Markdown(f"# tstitch: trajectory stitching\nT-Stitch samples the first, noisy steps with a small "
                    "model and the rest with the large one: faster, at nearly the large model's quality. See "
                    f"{readme}.", elem_id="intro")
        with gr.Row():
            example_buttons = [(gr.Button(text, size="sm", elem_id=f"example-{i}"), name, chosen, steps)
                               for i, (text, name, chosen, steps) in enumerate(_examples(state))]
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                model = _checked_by_the_page(gr.Dropdown(state.choices, value=default, label="models", elem_id="model"))
                with gr.Accordion(f"not offered: {len(state.missing)} presets without their weights", open=False,
                                  visible=bool(state.missing)):
                    gr.Markdown(_missing_text(state), elem_id="missing")
                fractions = _checked_by_the_page(gr.CheckboxGroup(
                    settings["fractions"], value=settings["chosen"], elem_id="fractions",
                    label="fractions r of the steps on the small model(s); r 0 is the large model alone, always run "
                    "as the reference"))
                with gr.Row():
                    steps = gr.Number(settings["steps"], label="steps", elem_id="steps", min_width=100)
                    guidance = gr.Number(settings["guidance"], label="guidance", elem_id="guidance", min_width=100)
                with gr.Row():
                    seed = gr.Number(0, label="seed", elem_id="seed", min_width=100)
                    num_images = gr.Number(settings["num_images"], label="images", elem_id="images", min_width=100)
                scheduler = _checked_by_the_page(gr.Dropdown(schedulers, value=settings["scheduler"],
                                                             label="scheduler", elem_id="scheduler"))
                labels = gr.Textbox(settings["labels"], label="class labels (repeated to fill the images)",
                                    visible=settings["class_conditional"], elem_id="labels")
                prompt = gr.Textbox(settings["prompt"], label="prompt", visible=not settings["class_conditional"],
                                    elem_id="prompt")
                with gr.Accordion("a per-step plan from tstitch tune (optional), sampled as one more run",
                                  open=False, elem_id="plan-box"):
                    plan_file = gr.File(label="upload a plan.json", file_types=[".json"], type="filepath",
                                        elem_id="plan-file")
                    plan_pick = _checked_by_the_page(gr.Dropdown(
                        [("none", "")] + [(p, p) for p in settings["plans"]], value="", elem_id="plan-pick",
                        label="or pick a tstitch tune folder under the server's working directory"))
                with gr.Row():
                    run_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel_button = gr.Button("Cancel", elem_id="cancel")
            with gr.Column(scale=2):
                status = gr.HTML("", elem_id="status", elem_classes=["status"])
                gallery = gr.Gallery(label="the same seeds at each fraction r (captions: median time, speed-up "
                                     "and its range)", columns=2, format="png", object_fit="contain",
                                     elem_id="gallery", height="auto", allow_preview=False)
                legend = gr.HTML(views.legend(settings["names"]), elem_id="legend")
                table = gr.HTML(elem_id="table")
                frontier = gr.Image(label="speed/quality frontier", type="pil", elem_id="frontier",
                                    interactive=False, alt_text="the speed/quality frontier (not drawn yet)")
                note = gr.Markdown(elem_id="note")
                with gr.Accordion("the runs as JSON", open=False):
                    records = gr.JSON(elem_id="records")

        controls = [fractions, steps, guidance, scheduler, labels, prompt, legend, plan_pick]

        def control_updates(name: str, chosen: list[str] | None = None, steps_value: int | None = None) -> tuple:
            with state.lock:
                new = _choice_settings(state, name)
            return (gr.update(choices=new["fractions"], value=chosen or new["chosen"]), steps_value or new["steps"],
                    new["guidance"], new["scheduler"],
                    gr.update(value=new["labels"], visible=new["class_conditional"]),
                    gr.update(value=new["prompt"], visible=not new["class_conditional"]),
                    views.legend(new["names"]),
                    gr.update(choices=[("none", "")] + [(p, p) for p in new["plans"]], value=""))

        def on_model(name: str):
            try:
                return control_updates(name)
            except (ValueError, OSError) as error:
                raise _refuse(gr, error) from None

        async def on_generate(name, chosen, steps_value, scheduler_value, guidance_value, seed_value, images_value,
                              labels_value, prompt_value, upload=None, picked=None):
            try:
                with state.lock:
                    loaded = state.models(name if isinstance(name, str) else repr(name))
                plan, source = _plan_choice(state, upload, picked, len(loaded.names))
                request = parse_request(
                    name, chosen, steps_value, scheduler_value, guidance_value, seed_value, images_value,
                    labels_value, prompt_value, num_models=len(loaded.names), class_conditional=loaded.kind == "class",
                    num_classes=getattr(loaded, "num_classes", None), plan=plan, plan_source=source,
                    max_work=state.max_work)
            except (ValueError, OSError) as error:
                raise _refuse(gr, error) from None
            job = RequestJob(state, loaded, request, repetitions=state.repetitions).start()
            skip = gr.skip()
            try:
                shown = ""
                while not job.done:
                    await asyncio.sleep(POLL_SECONDS)
                    if job.first_round is not None and not job.resumed.is_set():
                        yield _outputs(state, job.first_round, views.status_html(job.status, job.progress))
                        job.resume()  # Gradio asks for the next output once this one is on its way
                    elif job.status != shown:
                        shown = job.status
                        yield skip, skip, skip, skip, skip, views.status_html(job.status, job.progress)
                job.join()
                if isinstance(job.error, (ValueError, OSError)):  # generate's own checks
                    raise _refuse(gr, job.error)
                if job.error is not None:
                    logger.error("the request failed", exc_info=job.error)
                    raise gr.Error(f"the request failed: {job.error}", print_exception=False)
                if job.result is None:
                    return
                done = f"done: {request.num_runs} runs x {job.repetitions} repetitions in {job.seconds:.1f} s"
                yield _outputs(state, job.result, views.status_html(done))
            finally:
                job.cancel()  # cancelled, disconnected or done: the sampling stops before its next step

        def on_example(name: str, chosen: list[str], steps_value: int) -> tuple:
            try:
                return (name, *control_updates(name, chosen, steps_value))
            except (ValueError, OSError) as error:
                raise _refuse(gr, error) from None

        model.input(on_model, model, controls, concurrency_limit=1, concurrency_id="models", api_name="choose_models")
        for button, name, chosen, steps_value in example_buttons:
            button.click(lambda n=name, c=chosen, s=steps_value: on_example(n, c, s), None, [model, *controls],
                         concurrency_limit=1, concurrency_id="models", api_visibility="private")
        event = run_button.click(
            on_generate, [model, fractions, steps, scheduler, guidance, seed, num_images, labels, prompt, plan_file,
                          plan_pick],
            [gallery, table, frontier, records, note, status], concurrency_limit=1, concurrency_id="models",
            api_name=GENERATE_API, show_progress="hidden",
        )
        cancel_button.click(None, None, None, cancels=[event], api_name="cancel")
    return app


def _outputs(state: ServeState, result: PageResult, status: str) -> tuple:
    """The generate event's outputs: gallery, table, frontier, records, note, status."""
    gr = _gradio()
    names = result.runs[0].names
    tiles = [(views.tile(run), views.caption(run, result.partial)) for run in result.runs]
    frontier = None if result.partial else views.load_frontier(state.frontier_files, names)
    table = views.summary_table(result, frontier)
    notes = [result.timing_text()]
    if result.partial:
        picture = gr.skip()
    elif frontier is None:
        picture = gr.update(value=None, alt_text="no frontier")
        notes.append(f"No measured frontier of {' -> '.join(names)} in {', '.join(state.frontier_files)}: "
                     "`tstitch demo` (the digits family) or `tstitch tune` writes one.")
    else:
        picture = gr.update(value=views.plot_frontier(frontier, result), alt_text=views.frontier_alt(frontier, result))
        batch = f"batch {frontier.batch_size}" if frontier.batch_size else "a batch size the file does not give"
        differs = "" if frontier.batch_size == result.batch_size else f", not this page's batch {result.batch_size}"
        notes.append(f"Frontier measured in `{frontier.source}` at {batch}{differs}; the page never computes "
                     "FID on its own few images.")
    return tiles, table, picture, result.as_dict(), "\n\n".join(notes), status


def use_one_thread_for_tiny_models(state: ServeState, default: str) -> None:
    """One torch thread on a CPU for models under 10M parameters, as ``tstitch sample`` does (threads only add
    overhead there, and a shared machine's cores thrash)."""
    import torch

    large = state.models(default).large
    if large.device.type == "cpu" and sum(p.numel() for p in large.parameters()) < TINY:
        torch.set_num_threads(1)


def start(state: ServeState, default: str, host: str = "127.0.0.1", port: int = 7860):
    """Build the page and serve it in the background; returns the app (``app.close()`` stops it) and its URL."""
    app = build_app(state, default)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=True,
               footer_links=["api"], css=PAGE_CSS, head=PAGE_HEAD, max_file_size=MAX_UPLOAD,
               allowed_paths=[str(README)] if README.is_file() else None)
    return app, app.local_url
