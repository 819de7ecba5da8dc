"""``sdetool plot layers``: where the noise enters, layer by layer, for one model or before and after.

Pure: from analysis set documents to a matplotlib Figure; the sets come from ``extract --layers`` stores
(``image_L<i>``, ``text_L<i>`` beside ``image`` and ``text``), analysed here or given as reports.
"""

from __future__ import annotations

import re

from sdetool.errors import BadInputError
from sdetool.spectral.spectrum import BANDS

LAYER_KEY = re.compile(r"^(?P<modality>.+)_L(?P<index>\d+)$")
LAYER_FIELDS = (("bands",), ("metrics", "effective_rank"), ("noise", "numerical_rank"), ("dim",))
FINAL = None  # the depth of a modality's final set: one past the deepest layer of any input


def layer_table(label: str, sets: dict) -> dict:
    """``{modality: [(depth, name, set document), ...]}`` of one input: its layers in order, then its final set
    (depth :data:`FINAL`, placed by the figure one past the deepest layer of every input)."""
    found: dict = {}
    for key, entry in sets.items():
        match = LAYER_KEY.match(key)
        if match:
            found.setdefault(match["modality"], []).append((int(match["index"]), f"L{match['index']}", entry))
    if not found:
        raise BadInputError(f"{label}: holds no layer sets (image_L<i>, text_L<i>); extract them with --layers")
    table = {}
    for modality, rows in found.items():
        rows.sort(key=lambda row: row[0])
        if modality in sets:
            rows.append((FINAL, "final", sets[modality]))
        models = {entry.get("model") for _, _, entry in rows if entry.get("model")}
        if len(models) > 1:
            first, second = sorted(models)[:2]
            raise BadInputError(f"{label}: its {modality} layers come from different models ({first} and {second}); "
                                "a layer plot needs one model per input")
        table[modality] = rows
    return table


def layers_figure(series: list[tuple[str, dict]], *, title: str | None = None):
    """Per modality (rows): band energy shares, effective rank, and numerical rank with the dimension, against
    depth (columns); one line style per input (before and after), one colour per band.

    Parameters
    ----------
    series : list of (label, {modality: [(depth, name, set document)]})
    """
    from sdetool.results.plots import BAND_COLOURS, LINE_STYLES, _figure, _percent, series_colour

    modalities = sorted({m for _, table in series for m in table}, key=lambda m: (m != "image", m))
    deepest = {m: max(d for _, table in series for d, _, _ in table.get(m, []) if d is not FINAL) for m in modalities}
    series = [(label, {m: [(deepest[m] + 1 if d is FINAL else d, name, entry) for d, name, entry in rows]
                       for m, rows in table.items()}) for label, table in series]
    figure = _figure(13, 3.6 * len(modalities))
    axes = figure.subplots(len(modalities), 3, squeeze=False)
    for row, modality in enumerate(modalities):
        shares, ranks, dims = axes[row]
        for position, (label, table) in enumerate(series):
            rows = table.get(modality)
            if not rows:
                continue
            style = LINE_STYLES[position % len(LINE_STYLES)]
            depth = [d for d, _, _ in rows]
            for band in BANDS:
                values = [_percent(entry["bands"][band]["energy_share"]) for _, _, entry in rows]
                shares.plot(depth, values, style, color=BAND_COLOURS[band], marker="o", ms=3,
                            label=f"{band} ({label})" if len(series) > 1 else band)
            colour = series_colour(position)
            ranks.plot(depth, [entry["metrics"]["effective_rank"] for _, _, entry in rows], style, color=colour,
                       marker="o", ms=3, label=label)
            dims.plot(depth, [entry["noise"]["numerical_rank"] for _, _, entry in rows], style, color=colour,
                      marker="o", ms=3, label=f"numerical rank ({label})")
            dims.plot(depth, [entry["dim"] for _, _, entry in rows], style, color=colour, alpha=0.35, lw=3,
                      label=f"dimension ({label})")
        names = {d: name for _, table in series for d, name, _ in table.get(modality, [])}
        for panel, what in ((shares, "energy share (%)"), (ranks, "effective rank"), (dims, "components")):
            panel.set_label(f"{modality}: {what}")
            panel.set_title(f"{modality}: {what}", fontsize="medium")
            panel.set_xticks(sorted(names), [names[d] for d in sorted(names)], fontsize="small")
            panel.set_xlabel("depth (input side first)")
            panel.grid(alpha=0.3)
        shares.set_ylim(-2, 102)
        shares.legend(fontsize="x-small", ncol=1 if len(series) == 1 else 2)
        ranks.legend(fontsize="small")
        dims.legend(fontsize="x-small")
    if title:
        figure.suptitle(title)
    return figure
