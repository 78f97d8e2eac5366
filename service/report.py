"""Human-readable renderings of result objects: terminal text, CSV rows, an HTML report."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Callable, Iterable

CSV_FIELDS = ["path", "sha256", "verdict", "artist", "confidence", "top_style_artist", "top_style",
              "best_match_work", "best_match_source", "best_match_similarity", "signatures", "forged_signatures",
              "error", "artists_scored"]  # (new columns go last: a resumed CSV keeps its older rows' order)


def describe(r: dict[str, Any], notes: bool = True) -> str:
    """A short terminal summary of one result; `notes`: say which embedders were unavailable (a run
    that prints many results says so once, not under every one)."""
    from detector.images import for_terminal as t
    if r.get("error"):
        return t(f"{r['path']}: error: {r['error']}")
    v = r["verdict"]
    lines = [f"{t(r['path'])} ({r['width']}x{r['height']})",
             f"  verdict: {v['label']}" + (f" ({v['artist']})" if v["artist"] else "") + f"  confidence {v['confidence']:.2f}"]
    for a in r["artists"][:5]:
        lines.append(f"  {a['artist']:<20} style {a['style']:.2f}  derivative {a['derivative']:.2f}  copy {a['copy']:.2f}")
    for m in r["matches"][:5]:
        lines.append(f"  match: work {m['work']} ({t(_whose(m))}) {t(m['source'])}  similarity {m['similarity']:.2f}  box {m['box']}")
    for s in r["signatures"]:
        who = s["artist"] or "unknown signer"
        lines.append(f"  signature at {s['box']}: {who}" + ("  FORGED" if s["forged"] else ""))
    off = [f"{k}: {v}" for k, v in r["embedders"].items() if notes and str(v).startswith("unavailable")]
    lines += [f"  note: {o}" for o in off]
    return "\n".join(lines)


def _whose(match: dict[str, Any]) -> str:
    """Whose work a match is: its artist's, or a generated sample's run and index."""
    return str(match["artist"]) if match.get("run") is None else f"sample {match.get('index')} of run {match['run']}"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: one that would start a formula (a file named
    `=HYPERLINK(...).png`, chosen by whoever uploaded it) gets a leading apostrophe, as does one that
    starts with an apostrophe already, so `csv_text` reads every cell back exactly."""
    if isinstance(value, str) and value.startswith((*FORMULA_START, "'")):
        return "'" + value
    return value


def csv_text(cell: Any) -> Any:
    """A cell as `csv_cell` was given it (its text, for cells read back from a CSV)."""
    return cell[1:] if isinstance(cell, str) and cell.startswith("'") else cell


def csv_row(r: dict[str, Any]) -> dict[str, Any]:
    """The CSV columns of a result, text cells kept from being read as formulas (`csv_cell`)."""
    return {k: csv_cell(v) for k, v in _csv_values(r).items()}


def _csv_values(r: dict[str, Any]) -> dict[str, Any]:
    v = r.get("verdict") or {}
    top = r["artists"][0] if r.get("artists") else {}
    best = r["matches"][0] if r.get("matches") else {}
    return {"path": r["path"], "sha256": r.get("sha256"), "verdict": v.get("label"), "artist": v.get("artist"),
            "confidence": v.get("confidence"), "top_style_artist": top.get("artist"), "top_style": top.get("style"),
            "best_match_work": best.get("work"), "best_match_source": best.get("source"),
            "best_match_similarity": best.get("similarity"), "signatures": len(r.get("signatures") or []),
            "forged_signatures": sum(1 for s in r.get("signatures") or [] if s["forged"]), "error": r.get("error"),
            "artists_scored": len(r.get("artists") or [])}


def thumbnail(source: str | bytes | None, size: int = 96, boxes: list[list[int]] | None = None) -> str:
    """An inline data-URI thumbnail (so the report opens from disk) of a file or PNG bytes, with boxes:
    at most `size` pixels a side, never enlarged (the page enlarges a small icon, at no cost in bytes)."""
    from PIL import ImageDraw
    from detector.images import ImageError, decode, load, unshown
    try:
        img = (decode(source, "thumbnail") if isinstance(source, bytes) else load(source)).image
    except (ImageError, TypeError):
        if not isinstance(source, str) or "\\x" not in source:
            return ""
        try:  # a record's path shows a name's non-UTF-8 bytes as \xNN: open the file it names
            img = load(unshown(source)).image
        except ImageError:
            return ""
    scale = min(1.0, size / max(img.size))
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    draw = ImageDraw.Draw(img)
    for b in boxes or []:
        draw.rectangle([c * scale for c in b], outline=(220, 20, 60), width=2)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


HTML_HEAD = """<!doctype html><meta charset="utf-8"><title>chimera scan report</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:6px;vertical-align:top}th{cursor:pointer;background:#f4f4f4}
.copy{color:#b00020;font-weight:bold}.derivative{color:#d35400;font-weight:bold}.style_match{color:#2e7d32}
img,.work{image-rendering:pixelated;border:1px solid #ccc}
.work{display:inline-block;width:64px;height:64px;background:center/contain no-repeat;vertical-align:middle}</style>
<h1>chimera scan report</h1><p>%s</p>
<table id="t"><thead><tr><th>image</th><th>path</th><th>verdict</th><th>confidence</th><th>nearest works</th>
<th>signatures</th></tr></thead><tbody>
"""
HTML_TAIL = """</tbody></table><script>
document.querySelectorAll('th').forEach((th,i)=>th.onclick=()=>{const tb=document.querySelector('#t tbody');
const rows=[...tb.rows];const asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
rows.sort((a,b)=>{const x=a.cells[i].dataset.v,y=b.cells[i].dataset.v;
const c=x!==undefined&&y!==undefined?parseFloat(x)-parseFloat(y):a.cells[i].innerText.localeCompare(b.cells[i].innerText);
return asc?c:-c});
rows.forEach(r=>tb.appendChild(r))});</script>
"""


def html_row(r: dict[str, Any], work_png: Callable[[int], bytes | None] = lambda _: None,
             shown: set[int] | None = None) -> str:
    """One report row. A registered work's thumbnail is a CSS class, defined (in a <style> before the
    row) the first time a row shows the work: a scan's flagged rows name the same few works again
    and again, and inlining each image anew made reports of thousands of rows hundreds of MB.
    `shown`: the works already defined in this report (updated)."""
    e = html.escape
    if r.get("error"):
        return (f"<tr><td></td><td>{e(r['path'])}</td><td>error</td><td data-v='0'></td>"
                f"<td>{e(r['error'])}</td><td></td></tr>\n")  # every column's cell, for the sort
    shown = set() if shown is None else shown
    v = r["verdict"]
    boxes = [m["box"] for m in r["matches"][:3]] + [s["box"] for s in r["signatures"]]
    styles = ""
    for m in r["matches"][:3]:
        if int(m["work"]) not in shown:
            shown.add(int(m["work"]))
            styles += f".w{int(m['work'])}{{background-image:url({thumbnail(work_png(m['work']) or m['source'], 64)})}}"
    near = "".join(f"<div><span class='work w{int(m['work'])}' title='{e(str(m['source']))}'></span> "
                   f"{e(_whose(m))} #{m['work']} {m['similarity']:.2f}</div>" for m in r["matches"][:3])
    sigs = "".join(f"<div>{e(str(s['artist'] or 'unknown'))}{' FORGED' if s['forged'] else ''} {s['box']}</div>"
                   for s in r["signatures"])
    return ((f"<style>{styles}</style>" if styles else "")
            + f"<tr><td><img src='{thumbnail(r['path'], 128, boxes)}' {_shown_at(r, 128)}></td><td>{e(r['path'])}</td>"
            f"<td class='{e(v['label'])}'>{e(v['label'])} {e(str(v['artist'] or ''))}</td>"
            f"<td data-v='{v['confidence']}'>{v['confidence']:.2f}</td><td>{near}</td><td>{sigs}</td></tr>\n")


def _shown_at(r: dict[str, Any], size: int) -> str:
    """The width and height attributes that show a result's image `size` pixels on its longer side."""
    scale = size / max(r["width"], r["height"])
    return f"width='{max(1, round(r['width'] * scale))}' height='{max(1, round(r['height'] * scale))}'"


def is_flagged(r: dict[str, Any]) -> bool:
    return bool(r.get("error")) or r["verdict"]["label"] in ("copy", "derivative") or any(
        s["forged"] for s in r["signatures"])


def write_html(results: Iterable[dict[str, Any]], out: Path, summary: str, flagged_only: bool = True,
               work_png: Callable[[int], bytes | None] = lambda _: None) -> None:
    """A self-contained report (thumbnails inlined) that opens from disk without a server.

    `results` are streamed, row by row; `work_png` gives a registered work's stored pixels, so
    evidence shows even if its source moved.
    """
    shown: set[int] = set()
    with open(out, "w", encoding="utf-8") as f:
        f.write(HTML_HEAD % html.escape(summary))
        for r in results:
            if is_flagged(r) or not flagged_only:
                f.write(html_row(r, work_png, shown))
        f.write(HTML_TAIL)
