"""The report as a document: headings, paragraphs, tables and figures, written as Markdown and
as one self-contained HTML page (figures inlined), and the matplotlib plumbing every section
shares. Kept apart from the sections so that each section module imports it, not the report.
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class Figure:
    name: str  # file stem: NAME.png and NAME.svg
    caption: str
    png: bytes = b""


@dataclass
class Doc:
    title: str
    blocks: list = field(default_factory=list)  # ("h", level, text) | ("p", text) | ("table", head, rows) | Figure

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, head: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.blocks.append(("table", list(head), [[_cell(c) for c in r] for r in rows]))


def _cell(v) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _fmt(v: float, digits: int = 4) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def to_markdown(doc: Doc) -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Figure):
            out += [f"![{b.caption}]({b.name}.png)", "", f"*{b.caption}* ([svg]({b.name}.svg))", ""]
        elif b[0] == "h":
            out += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            out += [b[1], ""]
        else:
            _, head, rows = b
            esc = lambda s: s.replace("|", "\\|")  # noqa: E731
            out.append("| " + " | ".join(map(esc, head)) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
            out.append("")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}figure{margin:1em 0}
img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#555}.failed{color:#b00}"""


def to_html(doc: Doc) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(doc.title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(doc.title)}</h1>"]
    for b in doc.blocks:
        if isinstance(b, Figure):
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(b.caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
        elif b[0] == "h":
            out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{html.escape(b[1])}</p>")
        else:
            _, head, rows = b
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
            for r in rows:
                cls = " class='failed'" if any("FAILED" in c for c in r) else ""
                out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


# --- plots ---------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, report_dir: Path, name: str, caption: str, doc: Doc) -> None:
    import io

    plt = _plt()
    fig.tight_layout()
    fig.savefig(report_dir / f"{name}.svg")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    png = buf.getvalue()
    (report_dir / f"{name}.png").write_bytes(png)
    doc.blocks.append(Figure(name, caption, png))


def _colors(n: int):
    cmap = _plt().get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_matrix(mat: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, report_dir: Path,
                name: str, doc: Doc, annotate: bool = True, vmin: float = 0.0, vmax: float = 1.0,
                caption: str | None = None, xlabel: str = "", ylabel: str = "", cbar_label: str = "") -> None:
    plt = _plt()
    if mat.shape[0] == mat.shape[1] and list(rows) == list(cols):  # drop searchers with no successful run
        keep = [i for i in range(len(rows)) if np.isfinite(np.delete(mat[i], i)).any() or np.isfinite(mat[i, i])]
        mat, rows, cols = mat[np.ix_(keep, keep)], [rows[i] for i in keep], [cols[i] for i in keep]
    long = max((len(str(c)) for c in cols), default=0) > 4
    fig, ax = plt.subplots(figsize=(max(4.0, (0.6 if long else 0.35) * len(cols) + 3.0),
                                    max(2.5, 0.4 * len(rows) + (2.5 if long else 1.5))))
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=90 if long or len(cols) > 8 else 0,
                  fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=8)
    if annotate and mat.size <= 150:
        for (i, j), v in np.ndenumerate(mat):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    fig.colorbar(im, ax=ax, label=cbar_label or None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    _save(fig, report_dir, name, caption or title, doc)


# --- sections --------------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
