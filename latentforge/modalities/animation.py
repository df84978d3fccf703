"""Animated previews shared by the clip modalities (video, motion): a looping GIF of all clips
side by side, and a filmstrip PNG (one row per clip, a few moments each) for a page that must not
move. Clips arrive as lists of equal-size PIL tiles, one per frame; captions sit under each tile
in the GIF and to the left of each row in the filmstrip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from latentforge.atomic import atomic_path


def fit_text(text: str, width: int, draw: ImageDraw.ImageDraw, lines_max: int = 2) -> str:
    """At most `lines_max` lines of `text` that fit `width` pixels in the default font."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    lines.append(line)
    if len(lines) > lines_max:
        last = lines[lines_max - 1]
        lines = lines[:lines_max - 1] + [last[: max(1, len(last) - 1)] + "…"]
    return "\n".join(lines)


def captioned_sheet(tiles: list[Image.Image], captions: list[str], ncols: int, caption_px: int) -> Image.Image:
    """Tiles in a grid of `ncols` columns, each caption in `caption_px` pixels under its tile."""
    w, h = tiles[0].size
    rows = math.ceil(len(tiles) / ncols)
    sheet = Image.new("RGB", (ncols * w, rows * (h + caption_px)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, text) in enumerate(zip(tiles, captions)):
        r, c = divmod(i, ncols)
        sheet.paste(tile, (c * w, r * (h + caption_px)))
        draw.text((c * w + 3, r * (h + caption_px) + h + 2), fit_text(text, w - 6, draw), fill=(20, 20, 20))
    return sheet


def save_gif(clips: list[list[Image.Image]], captions: list[str], path: Path, fps: float, *, ncols: int = 4,
             stride: int = 1, caption_px: int = 24) -> None:
    """All clips animated side by side, looping; every `stride`-th frame, timed to the data's rate."""
    T = len(clips[0])
    sheets = [captioned_sheet([c[t] for c in clips], captions, min(ncols, len(clips)), caption_px)
              for t in range(0, T, stride)]
    with atomic_path(path) as tmp:
        sheets[0].save(tmp, format="GIF", save_all=True, append_images=sheets[1:], loop=0,
                       duration=round(1000 * stride / fps), optimize=False)


def save_filmstrip(clips: list[list[Image.Image]], captions: list[str], path: Path, title: str, *,
                   moments: int = 8, label_px: int = 150, caption_lines: int = 2) -> None:
    """One row per clip: up to `moments` frames evenly spread over it, its caption on the left."""
    T = len(clips[0])
    w, h = clips[0][0].size
    picks = np.unique(np.linspace(0, T - 1, min(T, moments)).round().astype(int))
    top, gap = 22, 3  # white between frames and rows: a moment ends where the next begins
    sheet = Image.new("RGB", (label_px + len(picks) * (w + gap), top + len(clips) * (h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 5), f"{title} (frames {', '.join(map(str, picks))})", fill=(0, 0, 0))
    for r, (frames, text) in enumerate(zip(clips, captions)):
        y = top + r * (h + gap)
        draw.text((6, y + max(4, h // 2 - 8 * caption_lines)), fit_text(text, label_px - 12, draw, caption_lines),
                  fill=(20, 20, 20))
        for c, t in enumerate(picks):
            sheet.paste(frames[t], (label_px + c * (w + gap), y))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
