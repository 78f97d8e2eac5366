"""The analysis page: sample grid, then per sample its fit, a part-attribution overlay and nearest icons.

One self-contained HTML file (images inlined as data URIs) so a report can be mailed or archived
next to its metrics.json without breaking.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from generator.explain import Explanation
from generator.parts import LAYERS

if TYPE_CHECKING:
    from generator.analyze import Reference

ZOOM = 4  # icons are 32 px: draw them big and blocky
GRID_ZOOM = 3
SOURCE_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))
UNSEEN = (0, 0, 0)


def to_image(array: np.ndarray, zoom: int = ZOOM) -> Image.Image:
    img = Image.fromarray(np.clip(array * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)


def data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def grid(images: list[np.ndarray], columns: int = 8) -> Image.Image:
    """Images side by side, 1 px white gutters, blown up GRID_ZOOM times."""
    size = images[0].shape[0]
    rows = math.ceil(len(images) / columns)
    canvas = np.ones((rows * (size + 1) + 1, columns * (size + 1) + 1, 3), np.float32)
    for i, image in enumerate(images):
        y, x = divmod(i, columns)
        canvas[1 + y * (size + 1):1 + y * (size + 1) + size, 1 + x * (size + 1):1 + x * (size + 1) + size] = image
    return to_image(canvas, GRID_ZOOM)


def overlay(image: np.ndarray, explanation: Explanation, record: dict[str, Any]) -> np.ndarray:
    """Recognised parts tinted by the training icon they come from (black: a variant no icon uses)."""
    source_of = {layer: i for i, s in enumerate(record["sources"]) for layer in s["layers"]}
    out = np.repeat(image.mean(-1, keepdims=True), 3, -1) * 0.6 + 0.4
    for layer in record["recognised"]:
        colour = SOURCE_COLOURS[source_of[layer] % len(SOURCE_COLOURS)] if layer in source_of else UNSEEN
        weight = np.clip(explanation.visible[layer], 0, 1)[..., None] * 0.75
        out = out * (1 - weight) + weight * np.array(colour, np.float32) / 255
    return out


def verdict(record: dict[str, Any]) -> str:
    flags = [name for name, on in (("memorised", record["memorisation"]["memorised"]),
                                   ("chimera", record["chimera"]), ("scrambled", record["scrambled"])) if on]
    return ", ".join(flags) or "none"


def part_rows(record: dict[str, Any]) -> str:
    source_of = {layer: i for i, s in enumerate(record["sources"]) for layer in s["layers"]}
    rows = []
    for layer in LAYERS:
        p = record["parts"][layer]
        state = "hidden" if p["hidden"] else ("recognised" if p["recognised"] else "no")
        swatch = ""
        if layer in source_of:
            r, g, b = SOURCE_COLOURS[source_of[layer] % len(SOURCE_COLOURS)]
            swatch = f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'
        rows.append(f"<tr class='{state}'><td>{swatch}{layer}</td><td>{p['variant']}</td><td>{p['offset']}</td>"
                    f"<td>{p['error']}</td><td>{p['margin']}</td><td>{state}</td></tr>")
    return "".join(rows)


def sample_block(i: int, record: dict[str, Any], image: np.ndarray, explanation: Explanation,
                 icons: dict[str, np.ndarray]) -> str:
    nearest = "".join(
        f"<figure><img src='{data_uri(to_image(icons[n['path']]))}'><figcaption>{html.escape(Path(n['path']).name)}"
        f"<br>d={n['distance']}</figcaption></figure>" for n in record["memorisation"]["nearest"]
    )
    sources = "; ".join(f"{html.escape(Path(s['path']).name)}: {', '.join(s['layers'])}" for s in record["sources"])
    return (
        f"<section><h3>{i}: {html.escape(record['path'])} &mdash; {verdict(record)}</h3><div class='row'>"
        f"<figure><img src='{data_uri(to_image(image))}'><figcaption>sample</figcaption></figure>"
        f"<figure><img src='{data_uri(to_image(explanation.fit))}'><figcaption>fit (rms {record['fit_error']})"
        f"</figcaption></figure>"
        f"<figure><img src='{data_uri(to_image(overlay(image, explanation, record)))}'><figcaption>parts by source"
        f"</figcaption></figure>{nearest}"
        f"<table><tr><th>layer</th><th>variant</th><th>offset</th><th>error</th><th>margin</th><th></th></tr>"
        f"{part_rows(record)}</table></div><p>sources: {sources or '-'}; nearest/second ratio "
        f"{record['memorisation']['ratio']}</p></section>"
    )


def summary_table(metrics: dict[str, Any]) -> str:
    rows = [
        ("memorised", metrics["memorisation"]["rate"], metrics["memorisation"]["rule"]),
        ("recognised fraction", metrics["parts"]["recognised_fraction"], metrics["parts"]["rule"]),
        ("unseen-variant rate", metrics["parts"]["unseen_variant_rate"], metrics["parts"]["unseen_variant_rule"]),
        ("mean relative displacement (px)", metrics["layout"]["mean_relative_displacement_px"], metrics["layout"]["rule"]),
        ("scrambled", metrics["layout"]["scrambled_rate"], ""),
        ("chimera", metrics["chimera"]["rate"], metrics["chimera"]["rule"]),
        ("scrambled chimera", metrics["chimera"]["scrambled_rate"], ""),
        ("novelty", metrics["novelty"]["rate"], metrics["novelty"]["rule"]),
    ]
    body = "".join(f"<tr><td>{name}</td><td>{'-' if v is None else f'{v:.3f}'}</td><td class='rule'>{html.escape(rule)}"
                   f"</td></tr>" for name, v, rule in rows)
    return f"<table class='summary'>{body}</table>"


def write_report(out: Path, metrics: dict[str, Any], records: list[dict[str, Any]], explanations: list[Explanation],
                 images: list[np.ndarray], ref: Reference, data: Path) -> None:
    """out/grid.png and out/report.html."""
    grid(images).save(out / "grid.png")
    icons = dict(zip(ref.paths, ref.icons))
    blocks = "".join(sample_block(i, r, im, e, icons) for i, (r, im, e) in enumerate(zip(records, images, explanations)))
    erf = metrics["receptive_field"]
    page = f"""<!doctype html><meta charset="utf-8"><title>chimera analysis {html.escape(metrics['run'])}</title>
<style>body{{font:14px sans-serif;margin:2em}} img{{image-rendering:pixelated}} figure{{display:inline-block;margin:0 6px;
text-align:center;font-size:11px}} .row{{display:flex;align-items:flex-start;gap:4px}} table{{border-collapse:collapse;
font-size:12px}} td,th{{padding:1px 6px;border-bottom:1px solid #ddd}} tr.no{{color:#999}} tr.hidden{{color:#ccc}}
.rule{{color:#666;font-size:11px}} .sw{{display:inline-block;width:10px;height:10px;margin-right:4px}}</style>
<h1>Run {html.escape(metrics['run'])}</h1>
<p>preset {html.escape(metrics['preset'])}, {metrics['steps']} steps, seed {metrics['seed']}, artist
{html.escape(metrics['artist'])} from {html.escape(str(data))}, {metrics['samples']} samples.</p>
{summary_table(metrics)}
<p>Effective receptive field (centre pixel, radius holding 50% / 90% of the input gradient) at t = {erf['t']}:
r50 = {erf['r50_px']} px, r90 = {erf['r90_px']} px.</p>
<h2>Samples</h2><img src="{data_uri(Image.open(out / 'grid.png'))}">
<h2>Per sample</h2>{blocks}
"""
    (out / "report.html").write_text(page)
