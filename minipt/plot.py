"""Pictures of what a model does: attention maps, CNN feature maps, the per-layer diff against a reference,
the words an OCR pipeline found in an image.

Each function takes plain tensors (or the list ``minipt.reference.layer_diffs``
returns) and gives back a ``matplotlib.figure.Figure``; ``save_png`` writes one.

    out = bert(**batch, output_attentions=True)
    fig = attention_maps(out.attentions, tokens, layers=[2], heads=None)  # all 12 heads of layer 2 (counted from 0)
    save_png(fig, "attention.png")
    fig = cross_attention(t5(ids, mask, sequences[:, :-1], output_attentions=True).cross_attentions, letters, phonemes)

matplotlib is an optional extra (``pip install "minipt[plot]"``), imported
only inside these functions; figures are built without ``pyplot``, so nothing
global (backends, open windows) changes.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Sequence

import torch

from .checks import check_bool, check_float, check_int, check_path
from .errors import InputError, MissingDependencyError
from .files import atomic_path


MAX_PIXELS = 100_000_000  # the largest picture drawn (at 100 dots per inch): 400 MB of RGBA, a 10,000-pixel square


def _figure(width: float, height: float):
    """A matplotlib Figure of ``width`` x ``height`` inches; one past ``MAX_PIXELS`` is an InputError (drawing it
    would take minutes and gigabytes)."""
    if width * height * 100 * 100 > MAX_PIXELS:
        raise InputError(f"the picture would be {width * 100:,.0f} x {height * 100:,.0f} pixels (at most {MAX_PIXELS:,} in all): draw "
                         "fewer panels (attention_maps(layers=..., heads=...); minipt attention --layer/--heads)")
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise MissingDependencyError('plotting needs matplotlib: pip install "minipt[plot]" (or pip install matplotlib)') from err
    return Figure(figsize=(width, height), layout="constrained")


def save_png(figure, path: str | os.PathLike, dpi: int = 100) -> None:
    """Write ``figure`` as a PNG file, atomically (``minipt.files.atomic_path``: a reader never sees half a picture);
    a path that cannot be written raises ``SaveError`` naming it."""
    if not callable(getattr(figure, "savefig", None)):
        raise InputError(f"figure must be a matplotlib Figure (what minipt.plot's functions return), got {type(figure).__name__}")
    path = check_path("path", path)
    dpi = check_int("dpi", dpi, low=20, high=1200)  # below 20 matplotlib cannot size the fonts; 1200 is print quality
    with atomic_path(path) as temporary:
        try:
            figure.savefig(temporary, format="png", dpi=dpi)
        except (RuntimeError, ValueError) as err:  # matplotlib's own refusals (a font that cannot be drawn at this size, ...)
            raise InputError(f"the figure cannot be drawn as a PNG at {dpi} dpi: {err}") from err


def _indices(chosen, count: int, what: str, owner: str = "the model has") -> list[int]:
    """Indices from 0, as ``layers.{i}`` names them (an int, a sequence, or None for all), or an InputError naming the range."""
    if chosen is not None and not isinstance(chosen, int) and (not hasattr(chosen, "__iter__") or getattr(chosen, "ndim", 1) == 0):
        raise InputError(f"{what}s must be a number, a list of numbers or None, got {type(chosen).__name__}")
    numbers = list(range(count)) if chosen is None else [chosen] if isinstance(chosen, int) else list(chosen)
    bad = [n for n in numbers if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < count]
    if bad or not numbers:
        raise InputError(f"{what} {bad[0] if bad else numbers!r} does not exist: {owner} {what}s 0..{count - 1}")
    return numbers


# -- attention -------------------------------------------------------------------
def attention_maps(
    probs: Sequence[torch.Tensor] | torch.Tensor,
    tokens: Sequence[str],
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | str | None = None,
    *,
    sequence: int = 0,
):
    """A grid of attention heatmaps: the query token down the side, the key token it looks at across.

    ``probs``: each layer's attention probabilities, (B, heads, T, T) per layer
    (``BertModel(..., output_attentions=True).attentions``), or one such tensor.
    ``tokens``: the T tokens of sequence ``sequence`` of the batch. ``layers``
    and ``heads`` are counted from 0, as everywhere in minipt (``layers.0`` is
    the first layer; None: all; ``heads="mean"``: the heads' average). One layer's heads fill a grid four wide; several layers give one
    row per layer.
    """
    probs = (probs,) if isinstance(probs, torch.Tensor) else list(probs) if hasattr(probs, "__iter__") else probs
    if not probs or not all(isinstance(p, torch.Tensor) and p.dim() == 4 and p.shape[-1] == p.shape[-2] for p in probs):
        raise InputError("attention_maps expects attention probabilities shaped (batch, heads, T, T), one tensor per layer")
    batch, num_heads, T, _ = probs[0].shape
    other = next((i for i, p in enumerate(probs) if p.shape[:3] != probs[0].shape[:3]), None)
    if other is not None:
        raise InputError(f"attention_maps draws layers of one batch: layer {other} has shape {tuple(probs[other].shape)}, layer 0 {tuple(probs[0].shape)}")
    check_int("sequence", sequence, low=0, high=batch - 1)
    if isinstance(tokens, str) or not hasattr(tokens, "__iter__"):
        raise InputError(f"tokens must be the {T} token labels of the sequence (a list of strings), got {type(tokens).__name__}")
    tokens = list(tokens)
    if len(tokens) != T:
        raise InputError(f"{len(tokens)} tokens for attention over {T} positions; give one label per position")
    layer_ids = _indices(layers, len(probs), "layer")
    mean = heads == "mean"
    head_ids = [0] if mean else _indices(heads, num_heads, "head")

    panels = []  # (title, (T, T) map)
    for layer in layer_ids:
        maps = probs[layer][sequence].detach().float().cpu()  # (heads, T, T)
        if mean:
            panels.append((f"layer {layer}, mean of {num_heads} heads", maps.mean(0)))
        else:
            panels += [(f"layer {layer}, head {h}", maps[h]) for h in head_ids]
    columns = min(4, len(panels)) if len(layer_ids) == 1 else len(head_ids)
    rows = math.ceil(len(panels) / columns)
    cell = min(max(2.4, 0.16 * T + 0.9), 6.0)  # room for the token labels (past 24 tokens fewer labels, no larger panels)
    fig = _figure(cell * columns + 0.8, cell * rows)
    axes = fig.subplots(rows, columns, squeeze=False)
    labels_small = T > 24  # long inputs: fewer, smaller labels
    image = None
    for ax, (title, attention) in zip(axes.flat, panels):
        image = ax.imshow(attention.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        step = max(1, T // 24) if labels_small else 1
        ax.set_xticks(range(0, T, step), tokens[::step], rotation=90, fontsize=7)
        ax.set_yticks(range(0, T, step), tokens[::step], fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    fig.supxlabel("key (attended to)", fontsize=9)
    fig.supylabel("query", fontsize=9)
    return fig


def patch_attention(
    probs: Sequence[torch.Tensor] | torch.Tensor,
    image=None,
    layers: int | Sequence[int] | None = None,
    *,
    heads: int | str = "mean",
    query: int = 0,
    sequence: int = 0,
    rollout: bool = False,
):
    """Where a vision transformer's token ``query`` (0: the [CLS] token) looks, over the image's patch grid.

    ``probs``: each layer's attention, (B, heads, 1 + g*g, 1 + g*g) per layer, the class token first
    (``ViTModel(..., output_attentions=True).attentions``). One panel per layer in ``layers`` (from 0;
    None: all), the heads' mean or one head, laid over ``image`` ((H, W, 3) uint8 array, PIL image or
    (3, H, W) tensor in 0..255) where given. ``rollout=True`` adds attention rollout (Abnar and Zuidema,
    2020): the product over layers of the heads' mean with the residual path, 0.5 A + 0.5 I, rows renormalised.
    """
    if isinstance(probs, torch.Tensor):
        probs = (probs,)
    if not probs or not all(isinstance(p, torch.Tensor) and p.dim() == 4 and p.shape[-1] == p.shape[-2] for p in probs):
        raise InputError("patch_attention expects attention probabilities shaped (batch, heads, T, T), one tensor per layer")
    batch, num_heads, T, _ = probs[0].shape
    grid = math.isqrt(T - 1)
    if T < 2 or grid * grid != T - 1:
        raise InputError(f"patch_attention needs a class token and a square patch grid: {T} tokens is not 1 + g*g")
    check_int("sequence", sequence, low=0, high=batch - 1)
    check_int("query", query, low=0, high=T - 1)
    check_bool("rollout", rollout)
    if heads != "mean":
        if not isinstance(heads, int):
            raise InputError(f"heads must be one head's index or 'mean', got {heads!r}")
        heads = _indices(heads, num_heads, "head")[0]
    layer_ids = _indices(layers, len(probs), "layer")
    maps = [p[sequence].detach().float().cpu() for p in probs]  # each (heads, T, T)
    panels = [(f"layer {layer}, " + ("mean of heads" if heads == "mean" else f"head {heads}"),
               (maps[layer].mean(0) if heads == "mean" else maps[layer][heads])[query, 1:]) for layer in layer_ids]
    if rollout:
        flow = torch.eye(T)
        for attention in maps:
            mixed = 0.5 * attention.mean(0) + 0.5 * torch.eye(T)  # (T, T): attention and the residual path
            flow = (mixed / mixed.sum(-1, keepdim=True)) @ flow
        panels.append((f"rollout over {len(maps)} layers", flow[query, 1:]))
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = _figure(2.6 * columns, 2.6 * rows)
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    picture = None if image is None else _picture(image)
    for ax, (title, weights) in zip(axes, panels):
        extent = None if picture is None else (0, picture.shape[1], picture.shape[0], 0)
        if picture is not None:
            ax.imshow(picture)
        ax.imshow(weights.reshape(grid, grid).numpy(), cmap="inferno", alpha=0.6 if picture is not None else 1.0,
                  extent=extent, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"where token {query}{' ([CLS])' if query == 0 else ''} looks, over the {grid}x{grid} patches", fontsize=10)
    return fig


def cross_attention(
    probs: Sequence[torch.Tensor] | torch.Tensor,
    inputs: Sequence[str],
    outputs: Sequence[str],
    layers: int | Sequence[int] | None = None,
    *,
    heads: int | str = "mean",
    sequence: int = 0,
):
    """Where an encoder-decoder looked while it wrote each output token: one heatmap per decoder layer, the output
    tokens down the side, the input tokens across (for grapheme-to-phoneme: the phonemes against the letters).

    ``probs``: the decoder's cross-attention, (B, heads, T, S) per layer, e.g. ``T5ForConditionalGeneration(ids, mask,
    sequences[:, :-1], output_attentions=True).cross_attentions`` for what ``generate`` returned: row t is the step that
    chose ``sequences[:, t + 1]``, so ``outputs`` labels each row with the token that step wrote. ``inputs``: the S
    input tokens of sequence ``sequence``. ``layers`` counted from 0 (None: all); ``heads``: "mean" or one head's index.
    """
    if isinstance(probs, torch.Tensor):
        probs = (probs,)
    if not probs or not all(isinstance(p, torch.Tensor) and p.dim() == 4 for p in probs) or len({p.shape for p in probs}) != 1:
        raise InputError("cross_attention expects cross-attention probabilities shaped (batch, heads, T, S), one tensor per decoder layer")
    batch, num_heads, T, S = probs[0].shape
    check_int("sequence", sequence, low=0, high=batch - 1)
    inputs, outputs = list(inputs), list(outputs)
    if len(inputs) != S or len(outputs) != T:
        raise InputError(f"{len(inputs)} input and {len(outputs)} output tokens for cross-attention over {S} inputs from {T} outputs; "
                         "give one label per position")
    if heads != "mean":
        if not isinstance(heads, int) or isinstance(heads, bool):
            raise InputError(f"heads must be one head's index or 'mean', got {heads!r}")
        heads = _indices(heads, num_heads, "head")[0]
    layer_ids = _indices(layers, len(probs), "layer")
    panels = []  # (title, (T, S) map)
    for layer in layer_ids:
        maps = probs[layer][sequence].detach().float().cpu()  # (heads, T, S)
        panels.append((f"layer {layer}, " + (f"mean of {num_heads} heads" if heads == "mean" else f"head {heads}"),
                       maps.mean(0) if heads == "mean" else maps[heads]))
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    width, height = max(2.4, 0.2 * S + 1.0), max(2.4, 0.2 * T + 1.0)  # room for a label per token
    fig = _figure(width * columns + 0.8, height * rows + 0.4)
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    image = None
    for ax, (title, attention) in zip(axes, panels):
        image = ax.imshow(attention.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(S), inputs, rotation=90 if max(map(len, inputs), default=0) > 2 else 0, fontsize=7)
        ax.set_yticks(range(T), outputs, fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    fig.supxlabel("input token (attended to)", fontsize=9)
    fig.supylabel("output token (being written)", fontsize=9)
    return fig


# -- CNN feature maps ---------------------------------------------------------------
def feature_maps(maps: torch.Tensor, *, channels: int | Sequence[int] = 15, image=None, title: str | None = None):
    """A grid of one image's channels from a CNN stage.

    ``maps``: (C, H, W), or (1, C, H, W) for a batch of one (a stage's output,
    e.g. from a forward hook). ``channels``: how many to show (the most active
    by mean activation, strongest first) or a list of channel indices.
    ``image``: the input picture ((H, W, 3) uint8 array, PIL image or (3, H, W)
    tensor in 0..255), shown first. Each channel is scaled to its own range.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (3, 4) or (maps.dim() == 4 and maps.shape[0] != 1):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise InputError(f"feature_maps expects one image's maps shaped (C, H, W) or (1, C, H, W), got {shape}")
    maps = maps.detach().float().cpu().reshape(maps.shape[-3:])  # (C, H, W)
    C = maps.shape[0]
    if C == 0 or maps.shape[1] == 0 or maps.shape[2] == 0:
        raise InputError(f"feature_maps got maps of shape {tuple(maps.shape)}: no channel or no pixel to draw")
    if isinstance(channels, int):
        check_int("channels", channels, low=1)
        chosen = maps.mean((1, 2)).argsort(descending=True)[: min(channels, C)].tolist()
    else:
        chosen = _indices(channels, C, "channel", owner="the maps have")
    panels = len(chosen) + (image is not None)
    columns = min(8, panels)
    rows = math.ceil(panels / columns)
    fig = _figure(1.6 * columns, 1.6 * rows + (0.4 if title else 0.0))
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    if image is not None:
        axes[0].imshow(_picture(image))
        axes[0].set_title("input", fontsize=8)
    for ax, c in zip(axes[image is not None :], chosen):
        ax.imshow(maps[c].numpy(), cmap="magma", interpolation="nearest")
        ax.set_title(f"channel {c}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[panels:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _picture(image):
    """An (H, W, 3) array for imshow, from a path, a PIL image, an (H, W[, 3]) array or a (3|1, H, W) / (H, W) tensor."""
    import numpy as np

    from .vision import load_image

    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    if isinstance(image, torch.Tensor):
        if image.dim() == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)  # (H, W, C)
        picture = image.detach().cpu().clamp(0, 255).to(torch.uint8).numpy()
    else:
        picture = np.asarray(image)
    if picture.ndim not in (2, 3) or (picture.ndim == 3 and picture.shape[2] not in (1, 3, 4)) or picture.dtype == object:
        raise InputError(f"image must be a picture: a path, a PIL image, an (H, W, 3) array or a (3, H, W) tensor; got shape {picture.shape}")
    return picture


# -- per-layer differences -------------------------------------------------------------
def layer_diff(report: Sequence[tuple[str, float]], tolerance: float = 1e-5, *, title: str | None = None):
    """The difference at each place on a log scale, with the tolerance line: a ``minipt.reference.DiffReport``
    (the relative differences against its tolerance; points whose shapes differ are drawn at the top, marked, and
    counted above it) or a list of (place, max abs difference) pairs.

    Exact zeros, which a log scale cannot show, sit on the bottom edge, drawn as open circles.
    """
    ylabel = "max abs difference"
    tolerance = check_float("tolerance", tolerance, low=0, low_open=True)
    reshaped: set[str] = set()  # the places whose shapes differ (a DiffReport's)
    if hasattr(report, "rows") and hasattr(report, "rtol"):
        ylabel, tolerance = "difference / largest reference value", report.rtol
        reshaped = {row.name for row in report.rows if row.shapes is not None}
        report = [(row.name, math.inf if row.shapes is not None else row.relative) for row in report.rows]
    if isinstance(report, (str, bytes)) or not hasattr(report, "__iter__") or getattr(report, "ndim", 1) == 0:
        raise InputError(f"layer_diff expects a minipt.reference.DiffReport or a list of (place, max abs difference) pairs, got {type(report).__name__}")
    rows = list(report)
    if not rows or not all(isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], (int, float)) for r in rows):
        raise InputError("layer_diff expects a non-empty list of (place, max abs difference) pairs, as minipt.reference.layer_diffs returns")
    places, diffs = [r[0] for r in rows], [float(r[1]) for r in rows]
    if any(d < 0 for d in diffs):
        raise InputError(f"differences must be non-negative, got {diffs}")
    broken = [i for i, d in enumerate(diffs) if not math.isfinite(d) and places[i] not in reshaped]  # NaN or inf: where a picture is wanted most
    other_shape = [i for i, place in enumerate(places) if place in reshaped]
    finite = [d for d in diffs if math.isfinite(d)]
    top = max(finite + [tolerance]) * 10
    diffs = [d if math.isfinite(d) else top for d in diffs]  # drawn at the top, marked
    positive = [d for d in diffs if d > 0]
    floor = min(positive + [tolerance]) / 10
    fig = _figure(min(16.0, max(4.0, 0.6 * len(rows) + 1.5)), 4.2 if len(rows) > 20 else 3.2)  # many places: narrow, labels upright
    ax = fig.subplots()
    x = range(len(rows))
    ax.plot(x, [max(d, floor) for d in diffs], color="tab:blue", linewidth=1, zorder=1)
    above = [d > tolerance for d in diffs]
    ax.scatter([i for i, d in zip(x, diffs) if d > 0], [d for d in diffs if d > 0], c=["tab:red" if d > tolerance else "tab:blue" for d in diffs if d > 0], zorder=2)
    zeros = [i for i, d in zip(x, diffs) if d == 0]
    if zeros:
        ax.scatter(zeros, [floor] * len(zeros), facecolors="none", edgecolors="tab:blue", zorder=2, label="exactly 0")
    if broken:
        ax.scatter(broken, [top] * len(broken), marker="x", color="black", s=60, zorder=3, label="not finite (NaN or inf)")
    if other_shape:
        ax.scatter(other_shape, [top] * len(other_shape), marker="s", color="black", s=40, zorder=3, label="another shape")
    ax.axhline(tolerance, color="tab:red", linestyle="--", linewidth=1, label=f"tolerance {tolerance:g}")
    ax.set_yscale("log")
    ax.set_ylim(max(floor / 2, sys.float_info.min), min(max(diffs + [tolerance]) * 5, sys.float_info.max))  # inside float64's range
    rotation = 0 if len(rows) <= 6 else 45 if len(rows) <= 20 else 90
    ax.set_xticks(list(x), places, rotation=rotation, ha="right" if rotation == 45 else "center", fontsize=8 if len(rows) <= 20 else 7)
    ax.set_ylabel(ylabel)
    exact = f", {len(zeros)} exactly equal" if zeros else ""
    ax.set_title(title or f"{sum(above)} of {len(rows)} places above the tolerance{exact}", fontsize=10)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


# -- text found in an image -------------------------------------------------------------
def ocr_boxes(image, words: Sequence, lines: Sequence = (), *, title: str | None = None):
    """The image with each word's box drawn over it and its text above the box (``minipt.ocr.read_words``'s
    ``Word``s: anything with ``box`` (4, 2) corners in the image's pixels, ``text`` and ``confidence``), the
    box's colour going from red (confidence 0) to green (1). ``lines`` (``read_lines``' ``Line``s) are outlined
    in blue dashes around their words. ``image``: a path, a PIL image or an (H, W[, 3]) array, as read_words takes it."""
    import numpy as np
    from matplotlib.patches import Polygon

    from .models.craft import image_array

    pixels = image_array(image).numpy()  # (H, W, 3) uint8
    height, width = pixels.shape[:2]
    for name, items in (("words", words), ("lines", lines)):
        bad = [item for item in items if np.shape(getattr(item, "box", None)) != (4, 2) or not isinstance(getattr(item, "text", None), str)]
        if bad:
            raise InputError(f"ocr_boxes' {name} need a box of 4 (x, y) corners and a text each, as minipt.ocr returns them; got {bad[0]!r}")
    scale = 10 / max(width, height)  # the longer side 10 inches
    fig = _figure(max(width * scale, 3), max(height * scale, 2) + (0.4 if title else 0.0))
    ax = fig.add_subplot()
    ax.imshow(pixels, interpolation="nearest")
    for line in lines:
        ax.add_patch(Polygon(np.asarray(line.box), closed=True, fill=False, edgecolor="tab:blue", linestyle="--", linewidth=1))
    for word in words:
        box = np.asarray(word.box, dtype=float)
        sure = min(max(float(word.confidence), 0.0), 1.0)
        colour = (1 - sure, 0.7 * sure, 0.0)
        ax.add_patch(Polygon(box, closed=True, fill=False, edgecolor=colour, linewidth=1.5))
        (x, y), rise = box[0], np.degrees(np.arctan2(box[0][1] - box[1][1], box[1][0] - box[0][0]))  # along the top edge
        ax.text(x, y - 2, f"{word.text} {sure:.2f}", rotation=rise, rotation_mode="anchor", fontsize=7, color="black",
                ha="left", va="bottom", bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{len(words)} words" + (f" in {len(lines)} lines" if lines else ""), fontsize=10)
    return fig
