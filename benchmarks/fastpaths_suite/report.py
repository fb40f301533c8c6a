# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The fast-path comparison's report: a markdown table, its figure, and the files written after every
repetition (``fastpaths.json``, ``fastpaths.png``, ``fastpaths.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tstitch.experiments.plots import pyplot, save_figure
from tstitch.utils import atomic_write, ensure_writable_dir, write_json

__all__ = ["PAPER_RTX3090_SECONDS", "format_markdown", "format_quality", "plot_variants", "save_results"]

#: The paper's DiT-S -> DiT-XL timings for 8 images (100 DDIM steps, guidance 1.5) on one RTX 3090.
PAPER_RTX3090_SECONDS = {0.0: 16.5, 0.4: 11.0, 1.0: 1.7}


def _ratio(entry: dict[str, float]) -> str:
    return f"{entry['median']:.2f}x [{entry['min']:.2f}-{entry['max']:.2f}]"


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def format_markdown(results: dict[str, Any]) -> str:
    """The tables of every case: time per run of each variant, speed-ups, TFLOP/s, quality, memory."""
    lines = [f"machine: {results['machine']['label']}", ""]
    for case in results["cases"]:
        names = [v["name"] for v in case["variants"]]
        base = case["baseline"]
        peak = case["bf16_dense_peak_tflops"]
        lines.append(f"### {case['name']}: {case['small']['name']} -> {case['large']['name']}, {case['scheduler']} "
                     f"{case['num_steps']} steps, {case['num_images']} images, guidance {case['guidance_scale']:g}, "
                     f"{case['repetitions']} of {case['repetitions_planned']} repetitions")
        lines.append("")
        for v in case["variants"]:
            lines.append(f"- `{v['name']}`: {v['label']}")
        lines.append(f"- FLOP per step (2 per multiply-add, the whole batch): {case['small']['name']} "
                     f"{case['small']['flop_per_step'] / 1e9:.4g} G, {case['large']['name']} "
                     f"{case['large']['flop_per_step'] / 1e9:.4g} G; bf16 dense peak: "
                     f"{f'{peak:g} TFLOP/s' if peak else 'unknown (not a CUDA device of the table)'}")
        lines.append("")
        paper = case["name"] == "dit-s-xl" and case["num_steps"] == 100 and case["num_images"] == 8
        header = ["r"] + [f"{n} s/run" for n in names] + [f"{n} vs {base}" for n in names[1:]]
        header += [f"{n} speed-up vs r=0" for n in names] + [f"{n} TFLOP/s" for n in names]
        if peak:
            header += [f"{n} % of peak" for n in names]
        if paper:
            header.append("RTX 3090, published")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for row in case["rows"]:
            cells = [f"{row['fraction']:g}"]
            data = row["variants"]
            cells += [f"{data[n]['median']:.3f}" for n in names]
            cells += [_ratio(data[n]["speedup_vs_baseline"]) for n in names[1:]]
            cells += [_ratio(data[n]["speedup_vs_r0"]) for n in names]
            cells += [f"{data[n]['tflops']:.3g}" for n in names]
            if peak:
                cells += [f"{100 * data[n]['fraction_of_bf16_peak']:.1f}" for n in names]
            if paper:
                published = PAPER_RTX3090_SECONDS.get(row["fraction"])
                cells.append(f"{published} s" if published else "")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        quality = case.get("quality")
        if quality:
            for name, diff in quality.items():
                if isinstance(diff, dict):
                    lines.append(f"- latents at r={quality['fraction']:g}, `{name}` vs `{quality['versus']}`: "
                                 f"max |diff| {diff['max_abs']:.3g}, mean |diff| {diff['mean_abs']:.3g} (mean |latent| "
                                 f"{diff['reference_mean_abs']:.3g})")
        for name, compiled in case.get("compile", {}).items():
            lines.append(f"- `{name}` warm-up: first pass minus second {compiled['compile_seconds']:.1f} s "
                         f"(compilation, graph capture), {compiled['graphs_compiled']} graphs compiled")
        lines.append(f"- graphs compiled during the timed runs: {case['graphs_compiled_during_timing']}")
        memory = case.get("memory")
        if memory:
            lines.append(f"- peak memory at r={memory['fraction']:g} ({memory['method']}):")
            for name in names:
                entry = memory.get(name, {})
                resident, offloaded = entry.get("resident"), entry.get("offloaded")
                text = f"  - `{name}`: both models resident {_mib(resident['peak_bytes'])}" if resident else ""
                if offloaded:
                    text += (f", idle model offloaded {_mib(offloaded['peak_bytes'])} (run {offloaded['seconds']:.2f} s"
                             f" vs {resident['seconds']:.2f} s, transfers {offloaded['transfer_seconds']:.2f} s)")
                    if offloaded.get("note"):
                        text += f"; {offloaded['note']}"
                lines.append(text)
        lines.append("")
    return "\n".join(lines)


def format_quality(quality: dict[str, Any]) -> str:
    """The digits quality guard as a markdown table (see :func:`fastpaths_suite.quality.digits_quality`)."""
    lines = [f"### digits-FID at r={quality['fraction']:g}: digits-s -> digits-xl, {quality['num_samples']} samples, "
             f"DDIM {quality['num_steps']} steps, guidance {quality['guidance_scale']:g}, {quality['device']}", "",
             "| variant | seed | digits-FID | vs baseline | accuracy | max abs latent diff | mean abs latent diff |",
             "|---|---|---|---|---|---|---|"]
    for row in quality["rows"]:
        diff = row.get("latents_vs_baseline")
        lines.append(f"| {row['variant']} ({row['label']}) | {row['seed']} | {row['fid']:.3f} | "
                     f"{row['fid_vs_baseline']:.3f} | {row['accuracy']:.3f} | "
                     + (f"{diff['max_abs']:.3g} | {diff['mean_abs']:.3g} |" if diff else "| |"))
    lines.append("")
    lines.append(f"({quality['note']}.)")
    return "\n".join(lines)


def plot_variants(results: dict[str, Any], path: str | Path) -> Path:
    """Seconds per run against the fraction of the small model, one line per variant, one panel per case."""
    plt = pyplot()
    cases = results["cases"]
    fig, axes = plt.subplots(1, len(cases), figsize=(5.2 * len(cases), 4.0), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        x = [row["fraction"] for row in case["rows"]]
        for v in case["variants"]:
            data = [row["variants"][v["name"]] for row in case["rows"]]
            y = [d["median"] for d in data]
            low = [m - d["min"] for m, d in zip(y, data, strict=True)]
            high = [d["max"] - m for m, d in zip(y, data, strict=True)]
            ax.errorbar(x, y, yerr=[low, high], fmt="o-", capsize=3, label=f"{v['name']} ({v['label']})")
        if case["name"] == "dit-s-xl" and case["num_steps"] == 100 and case["num_images"] == 8:
            ax.scatter(list(PAPER_RTX3090_SECONDS), list(PAPER_RTX3090_SECONDS.values()), marker="x", color="gray",
                       label="RTX 3090, published")
        ax.set_yscale("log")
        ax.set_title(f"{case['name']}: {case['small']['name']} -> {case['large']['name']}\n{case['num_steps']} steps, "
                     f"{case['num_images']} images", fontsize=9)
        ax.set_xlabel("fraction of steps on the small model")
        ax.set_ylabel("seconds per run (median, min-max)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"fast paths against fp32 eager: {results['machine']['label']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save_figure(fig, path)


def save_results(results: dict[str, Any], out_dir: str | Path, stem: str = "fastpaths") -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.png`` and ``<stem>.md`` into ``out_dir`` (each atomically)."""
    out = ensure_writable_dir(out_dir)
    paths = [write_json(out / f"{stem}.json", results)]
    if results["cases"]:
        paths.append(plot_variants(results, out / f"{stem}.png"))
        text = format_markdown(results)
        paths.append(atomic_write(out / f"{stem}.md", lambda p: p.write_text(text + "\n")))
    return paths
