"""A document rendered twice: Markdown and one self-contained HTML page that fits a 1280 px window."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


@dataclass
class Doc:
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(("table", frame))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "h":
                out.append("#" * value[0] + " " + value[1])
            elif kind == "p":
                out.append(value)
            elif kind == "table":
                cells = [[str(c) for c in value.columns]] + [[_fmt(v) for v in row] for row in value.itertuples(index=False)]
                out.append("\n".join(["| " + " | ".join(cells[0]) + " |", "|" + " --- |" * len(cells[0])]
                                     + ["| " + " | ".join(r) + " |" for r in cells[1:]]))
            elif kind == "img":
                out.append(f"![{value[1]}]({value[0].name})")
            else:
                out.append("```\n" + value + "\n```")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h{value[0]}>{html.escape(value[1])}</h{value[0]}>")
            elif kind == "p":
                body.append(f"<p>{html.escape(value)}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in value.columns)
                rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                               for row in value.itertuples(index=False))
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(value[0].read_bytes()).decode()
                body.append(f'<img alt="{html.escape(value[1])}" src="data:image/png;base64,{data}">')
            else:
                body.append(f"<pre>{html.escape(value)}</pre>")
        # tables wrap their cells rather than widen the page: every table fits a 1280 px window
        style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:13px;max-width:100%}"
                 "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;overflow-wrap:anywhere}"
                 "th{background:#f3f3f3;vertical-align:bottom;overflow-wrap:normal}td:first-child,th:first-child{text-align:left}"
                 "img{max-width:100%;margin:1em 0}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap;"
                 "overflow-wrap:anywhere}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "—"
        return f"{value:.4g}"
    return str(value)


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
