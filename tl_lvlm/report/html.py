"""``report.html``: a :class:`~tl_lvlm.report.data.ReportData` as one self-contained page.

The page needs no server and no network: Plotly's JavaScript is embedded once in its head,
images are embedded as PNG data URIs, and each heatmap's per-sample coefficients are
embedded as JSON, which a small handler reads to redraw the per-sample chart when a head is
clicked. It holds, in order (a section without data is left out):

- the notes (e.g. the excluded samples);
- the findings table (finding, holds / does not hold / not tested, summary, n);
- per question: the head heatmap (hover: ``layer.head``, mean, std, rank; click: that head
  on every sample), the faithfulness and completeness curves against the competing
  rankings with the heads needed marked, and the fit quality per sample;
- the token-flow curves;
- the image-token maps over their images.

Every figure carries its model, question, settings and heads needed
(:meth:`~tl_lvlm.report.data.FigureContext.caption`). Every string from the data is
HTML-escaped. Element ids are numbered in page order, so the same data gives the same file.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
import plotly.io as pio
from plotly.offline import get_plotlyjs

from attribution.atomic import atomic_file
from tl_lvlm._utils.files import json_safe
from tl_lvlm.report.data import Finding, HeadMap, ReportData
from tl_lvlm.report.plotly_figures import (
    curves_figure,
    fit_figure,
    flow_figure,
    heatmap_figure,
    image_map_figure,
    per_sample_figure,
    per_sample_titles,
)

#: Plotly's toolbar without the link to Plotly's site (the page is offline).
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; }
table.findings { border-collapse: collapse; width: 100%; }
table.findings th, table.findings td { border-bottom: 1px solid #ddd; padding: .4rem .5rem;
       text-align: left; vertical-align: top; }
td.verdict { white-space: nowrap; font-weight: 600; }
td.holds { color: #1a7f37; } td.fails { color: #b42318; } td.untested { color: #777; }
td.n { text-align: right; }
.note { color: #555; font-size: .9rem; }
.figure { margin: .5rem 0 1.5rem; }
"""

# Redraws the per-sample chart of a heatmap when one of its heads is clicked. The data is
# the JSON block next to it: {"values": [layer][head][sample], "titles": [layer][head]}.
CLICK_HANDLER = """
(function () {
  var heatmap = document.getElementById(%(heatmap)s);
  var chart = document.getElementById(%(chart)s);
  var data = JSON.parse(document.getElementById(%(data)s).textContent);
  heatmap.on("plotly_click", function (event) {
    var point = event.points[0];
    var layer = point.y, head = point.x;
    Plotly.update(chart, {y: [data.values[layer][head]]},
                  {"title.text": data.titles[layer][head]});
  });
})();
"""


def render_html(data: ReportData) -> str:
    """The page of the module doc, as a string."""
    page = _Page()
    body = [f"<h1>{_esc(data.title)}</h1>"]
    if data.notes:
        items = "".join(f"<li>{_esc(note)}</li>" for note in data.notes)
        body.append(f'<ul class="notes">{items}</ul>')
    if data.findings:
        body.append(_findings_table(data.findings))
    for question in _questions(data):
        body.append(f"<h2>Question: {_esc(question)}</h2>")
        for heads in (h for h in data.heads if h.context.question == question):
            body.append(_head_section(page, heads))
        for curves in (c for c in data.curves if c.context.question == question):
            body.append("<h3>Faithfulness and completeness</h3>")
            body.append(page.figure(curves_figure(curves)))
        for fits in (f for f in data.fits if f.context.question == question):
            body.append("<h3>Fit quality</h3>")
            body.append(page.figure(fit_figure(fits)))
    if data.flows:
        body.append("<h2>Token flow: attention knockout</h2>")
        body.append(
            '<p class="note">1 = knocking the edges out in that window leaves the answer\'s '
            "logit as it is; 0 = removes it.</p>"
        )
        body += [page.figure(flow_figure(flow)) for flow in data.flows]
    if data.image_maps:
        body.append("<h2>Image-token attribution</h2>")
        body.append(
            '<p class="note">Red: keeping the patch raises the answer\'s logit; blue: lowers '
            "it.</p>"
        )
        body += [page.figure(image_map_figure(m)) for m in data.image_maps]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(data.title)}</title>\n<style>{STYLE}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_html(data: ReportData, path: str | os.PathLike) -> Path:
    """Write :func:`render_html` of ``data`` to ``path`` atomically; returns the path."""
    path = Path(path)
    page = render_html(data)
    with atomic_file(path) as f:
        f.write(page.encode("utf-8"))
    return path


class _Page:
    """Numbers the page's elements, so that their ids are unique and the file reproducible."""

    def __init__(self) -> None:
        self.n = 0

    def new_id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-{self.n}"

    def figure(self, fig, div_id: str | None = None) -> str:
        html_div = pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            div_id=div_id or self.new_id("figure"),
            config=PLOTLY_CONFIG,
            default_height=f"{fig.layout.height}px",
        )
        return f'<div class="figure">{html_div}</div>'


def _head_section(page: _Page, heads: HeadMap) -> str:
    """The heatmap, the per-sample chart of its top head, and the click handler between
    them."""
    heatmap_id, chart_id, data_id = (page.new_id(k) for k in ("heatmap", "samples", "data"))
    top_layer, top_head = np.unravel_index(int(np.argmin(heads.rank)), heads.rank.shape)
    values = np.moveaxis(heads.per_sample, 0, -1)  # [layer, head, sample]
    payload = {
        "values": json_safe(np.round(values, 6).tolist()),
        "titles": per_sample_titles(heads),
    }
    script = CLICK_HANDLER % {
        "heatmap": json.dumps(heatmap_id),
        "chart": json.dumps(chart_id),
        "data": json.dumps(data_id),
    }
    return "\n".join(
        [
            '<p class="note">Hover a head for its mean coefficient, spread (std over '
            "samples) and rank; click it to show its coefficient on every sample below.</p>",
            page.figure(heatmap_figure(heads), heatmap_id),
            page.figure(per_sample_figure(heads, int(top_layer), int(top_head)), chart_id),
            f'<script type="application/json" id="{data_id}">{_script_json(payload)}</script>',
            f"<script>{script}</script>",
        ]
    )


def _findings_table(findings: list[Finding]) -> str:
    rows = []
    for f in findings:
        verdict, css = {
            True: ("holds", "holds"),
            False: ("does not hold", "fails"),
            None: ("not tested", "untested"),
        }[f.holds]
        numbers = json.dumps(json_safe(f.statistic), indent=1, default=str)
        # Findings about one question say which (Finding.question).
        asked = "" if f.question is None else f"<br><small>{_esc(f.question)}</small>"
        rows.append(
            f"<tr><td>{_esc(f.finding)}{asked}</td><td class='verdict {css}'>{verdict}</td>"
            f"<td>{_esc(f.summary)}<details><summary>numbers</summary>"
            f"<pre>{_esc(numbers)}</pre></details></td><td class='n'>{int(f.n)}</td></tr>"
        )
    return (
        "<h2>Findings</h2>\n<table class='findings'>\n<thead><tr><th>finding</th>"
        "<th>verdict</th><th>summary</th><th>n</th></tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n</table>"
    )


def _questions(data: ReportData) -> list[str]:
    """The questions of the head sections, in order of first appearance."""
    seen: dict[str, None] = {}
    for item in (*data.heads, *data.curves, *data.fits):
        seen.setdefault(item.context.question)
    return list(seen)


def _esc(value: object) -> str:
    return html.escape(str(value))


def _script_json(value: object) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` or ``<!--`` can occur."""
    return (
        json.dumps(value, allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
