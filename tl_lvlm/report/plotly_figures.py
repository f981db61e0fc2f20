"""The report's interactive figures: one Plotly figure per piece of report data.

Every figure's title carries its :meth:`~tl_lvlm.report.data.FigureContext.caption` as the
subtitle. Strings from the data (questions, image and sample names, ranking names) are
HTML-escaped before they reach Plotly, which renders its text as a subset of HTML: a name
such as ``<b>.png`` shows as typed and cannot inject markup.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from attribution.plots import wrap_caption
from tl_lvlm.analysis.evaluation import C_THRESHOLD, F_THRESHOLD
from tl_lvlm.report.data import (
    Curves,
    FigureContext,
    FitQuality,
    FlowCurves,
    HeadMap,
    ImageMap,
)

#: The paper's fit quality on LLaVA-1.5-7B (arXiv 2509.17588), drawn for reference.
PAPER_R2, PAPER_PEARSON = 0.77, 0.88
#: Caption lines are wrapped at this many characters (Plotly does not wrap text).
CAPTION_WIDTH = 110
#: Line styles cycled over curves, so that a curve lying on another still shows.
SYMBOLS = ("circle", "square-open", "diamond", "x", "triangle-up-open")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
#: Coefficient maps: red = keeping the head / patch raises the answer's logit.
DIVERGING = "RdBu_r"


def text(value: object) -> str:
    """``value`` as text Plotly shows literally (``<``, ``>`` and ``&`` escaped)."""
    return html.escape(str(value), quote=False)


def number(x: float) -> str:
    """How the report writes a coefficient or a score."""
    return "n/a" if not np.isfinite(x) else f"{x:.4g}"


def head_label(layer: int, head: int) -> str:
    """``layer.head``, how the report names a head."""
    return f"{layer}.{head}"


def titled(
    fig: go.Figure, title: str, context: FigureContext, height: int, extra_top: int = 0
) -> go.Figure:
    """``fig`` with ``title`` and, below it, the context's caption (wrapped); ``extra_top``
    pixels more room above the plot (for subplot titles)."""
    lines = wrap_caption(context.caption(), CAPTION_WIDTH)
    fig.update_layout(
        title={
            "text": text(title),
            "subtitle": {"text": "<br>".join(map(text, lines))},
            "x": 0.01,
            "xanchor": "left",
            "yref": "container",
            "y": 0.99,
            "yanchor": "top",
        },
        margin={"t": 58 + 16 * len(lines) + extra_top, "l": 60, "r": 30, "b": 60},
        height=height,
        template="plotly_white",
    )
    return fig


def heatmap_figure(heads: HeadMap) -> go.Figure:
    """Layer x head mean coefficient; hovering a head shows ``layer.head``, its mean, its
    std over samples and its rank."""
    n_layers, n_heads = heads.mean.shape
    n = n_layers * n_heads
    custom = [
        [
            [
                head_label(layer, head),
                number(heads.mean[layer, head]),
                number(heads.std[layer, head]),
                f"{int(heads.rank[layer, head])} of {n}",
            ]
            for head in range(n_heads)
        ]
        for layer in range(n_layers)
    ]
    vmax = float(np.nanmax(np.abs(heads.mean))) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=heads.mean,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            customdata=custom,
            colorscale=DIVERGING,
            zmin=-vmax,
            zmax=vmax,
            colorbar={"title": {"text": "mean coefficient"}},
            hovertemplate="<b>head %{customdata[0]}</b><br>mean %{customdata[1]}"
            "<br>std %{customdata[2]}<br>rank %{customdata[3]}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="head", dtick=1 if n_heads <= 32 else None)
    fig.update_yaxes(title_text="layer", dtick=1 if n_layers <= 32 else None)
    title = f"Head attribution, mean over {len(heads.sample_names)} samples (click a head)"
    return titled(fig, title, heads.context, height=max(380, 170 + 18 * n_layers))


def per_sample_titles(heads: HeadMap) -> list[list[str]]:
    """``[layer][head]`` title of the per-sample chart when that head is shown."""
    n = heads.mean.size
    return [
        [
            text(
                f"Head {head_label(layer, head)} on each sample: mean "
                f"{number(heads.mean[layer, head])}, std {number(heads.std[layer, head])}, "
                f"rank {int(heads.rank[layer, head])} of {n}"
            )
            for head in range(heads.mean.shape[1])
        ]
        for layer in range(heads.mean.shape[0])
    ]


def per_sample_figure(heads: HeadMap, layer: int, head: int) -> go.Figure:
    """One head's coefficient on every sample (the chart a click on the heatmap redraws)."""
    fig = go.Figure(
        go.Bar(
            x=[text(name) for name in heads.sample_names],
            y=heads.per_sample[:, layer, head],
            marker_color="#4c72b0",
            hovertemplate="%{x}<br>coefficient %{y:.4g}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="sample", type="category")
    fig.update_yaxes(title_text="coefficient")
    fig = titled(fig, "", heads.context, height=380)
    # The title is already escaped text: set it without a second escape.
    fig.update_layout(title_text=per_sample_titles(heads)[layer][head])
    return fig


def curves_figure(curves: Curves) -> go.Figure:
    """Faithfulness and completeness of each ranking against k, side by side; each
    ranking's heads needed marked by a dotted vertical line in its colour."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Faithfulness: top-k heads kept", "Completeness: top-k heads ablated"),
        horizontal_spacing=0.08,
    )
    palette = ("#c44e52", "#4c72b0", "#55a868", "#8172b2", "#ccb974", "#64b5cd")
    for i, name in enumerate(curves.faithfulness):
        color = palette[i % len(palette)]
        needed = curves.heads_needed.get(name)
        label = f"{name} (heads needed: {'not reached' if needed is None else needed})"
        for col, values in ((1, curves.faithfulness[name]), (2, curves.completeness[name])):
            fig.add_trace(
                go.Scatter(
                    x=curves.ks,
                    y=values,
                    mode="lines+markers",
                    name=text(label),
                    legendgroup=text(name),
                    showlegend=col == 1,
                    line={"color": color, "dash": DASHES[i % len(DASHES)]},
                    marker={"symbol": SYMBOLS[i % len(SYMBOLS)], "size": 7},
                    hovertemplate=f"{text(name)}<br>k %{{x}}<br>%{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            if needed is not None:
                fig.add_vline(x=needed, line={"color": color, "dash": "dot"}, row=1, col=col)
    fig.add_hline(y=F_THRESHOLD, line={"color": "gray", "dash": "dash"}, row=1, col=1)
    fig.add_hline(y=C_THRESHOLD, line={"color": "gray", "dash": "dash"}, row=1, col=2)
    fig.update_xaxes(title_text="k")
    fig.update_yaxes(title_text="normalized logit", col=1)
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    title = "Faithfulness and completeness, mean over samples"
    return titled(fig, title, curves.context, height=480, extra_top=25)


def fit_figure(fits: FitQuality) -> go.Figure:
    """Held-out R² and Pearson ρ of every sample's fit, the paper's values dotted."""
    names = [text(name) for name in fits.sample_names]
    fig = go.Figure()
    for values, name, symbol in ((fits.r2, "held-out R²", "circle"), (fits.pearson, "ρ", "x")):
        fig.add_trace(
            go.Scatter(
                x=names,
                y=values,
                mode="markers",
                name=name,
                marker={"symbol": symbol, "size": 9},
                hovertemplate=f"%{{x}}<br>{name} %{{y:.3f}}<extra></extra>",
            )
        )
    for value, name in ((PAPER_R2, "R²"), (PAPER_PEARSON, "ρ")):
        fig.add_hline(
            y=value,
            line={"color": "gray", "dash": "dot"},
            annotation_text=f"paper's {name} {value}",
            annotation_position="bottom right",
        )
    fig.update_xaxes(title_text="sample", type="category")
    fig.update_yaxes(title_text="held-out fit")
    r2, rho = np.nanmean(fits.r2), np.nanmean(fits.pearson)
    title = f"Fit quality per sample: mean R² {number(r2)}, mean ρ {number(rho)}"
    return titled(fig, title, fits.context, height=400)


def flow_figure(flow: FlowCurves) -> go.Figure:
    """One curve per edge set over the knockout windows; markers, dashes and sizes differ
    so that curves lying on each other stay visible."""
    fig = go.Figure()
    for i, (name, values) in enumerate(flow.curves.items()):
        fig.add_trace(
            go.Scatter(
                x=list(flow.windows),
                y=values,
                mode="lines+markers",
                name=text(name),
                line={"dash": DASHES[i % len(DASHES)], "width": 2.5 - 0.5 * (i % 3)},
                marker={"symbol": SYMBOLS[i % len(SYMBOLS)], "size": 11 - 2 * (i % 4)},
                hovertemplate=f"{text(name)}<br>layers %{{x}}<br>%{{y:.3f}}<extra></extra>",
            )
        )
    fig.add_hline(y=1.0, line={"color": "gray", "dash": "dash"})
    fig.update_xaxes(title_text="layers of the knockout window", type="category")
    fig.update_yaxes(title_text="logit(knocked) / logit(clean)")
    # One hover label lists every curve: two curves on top of each other both show.
    fig.update_layout(legend={"orientation": "h", "y": -0.25}, hovermode="x unified")
    return titled(fig, flow.title, flow.context, height=440)


def image_map_figure(image_map: ImageMap) -> go.Figure:
    """The attribution map stretched over the (grayscale) image it covers."""
    height, width = image_map.image.shape[:2]
    rows, cols = image_map.attribution.shape
    dy, dx = height / rows, width / cols
    vmax = float(np.nanmax(np.abs(image_map.attribution))) or 1.0
    # Grayscale underneath, so that the image's colours do not read as attribution.
    gray = Image.fromarray(image_map.image).convert("L").convert("RGB")
    custom = [[[r, c] for c in range(cols)] for r in range(rows)]
    fig = go.Figure(
        [
            go.Image(source=png_data_uri(gray), hoverinfo="skip"),
            go.Heatmap(
                z=image_map.attribution,
                x0=dx / 2,
                dx=dx,
                y0=dy / 2,
                dy=dy,
                customdata=custom,
                opacity=0.6,
                colorscale=DIVERGING,
                zmin=-vmax,
                zmax=vmax,
                colorbar={"title": {"text": "coefficient"}},
                hovertemplate="patch row %{customdata[0]}, col %{customdata[1]}"
                "<br>coefficient %{z:.4g}<extra></extra>",
            ),
        ]
    )
    fig.update_xaxes(visible=False, range=[0, width])
    fig.update_yaxes(visible=False, range=[height, 0], scaleanchor="x")
    title = image_map.name
    if image_map.object_share is not None:
        title += f": object share of the positive attribution {number(image_map.object_share)}"
    return titled(fig, title, image_map.context, height=480)


def png_data_uri(image: Image.Image) -> str:
    """``image`` as a ``data:image/png;base64,...`` URI (embedded, so the page works offline)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
