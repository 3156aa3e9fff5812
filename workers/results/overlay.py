"""Pixels of the Secondary Capture overlays: the jet colour map and blend of a heatmap overlay, the
region outlines of a summary image, and the burned-in legend bands of both.

numpy and Pillow only (no matplotlib on the worker). Everything here is deterministic: the same
arrays and text give the same pixels.
"""

import functools
import io
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from workers.results.common import AI_RESULT_WARNING

# Opacity of the colour where the heatmap is 1; it falls to 0 where the heatmap is 0, so regions
# the model ignored keep their plain grey image.
MAX_ALPHA = 0.5
HEATMAP_TOLERANCE = 1e-6
MIN_FONT_PX = 10
MAX_FONT_PX = 48

_BAND_BACKGROUND = (24, 24, 24)
_RULE = (255, 255, 255)
_TITLE = (255, 255, 255)
_DETAIL = (200, 200, 200)
_WARNING = (255, 191, 0)
_ELLIPSIS = "..."

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class OutlineColour:
    """A colour of the summary image's palette, with the name the header text uses for it."""

    name: str
    rgb: RGB


# Saturated colours that stay apart from each other and from every grey of the radiograph
# (the spread between each colour's channels is at least 120), none of them the legend's amber warning colour.
# Outlines take them in order: the highest-scoring finding is red.
SUMMARY_PALETTE: tuple[OutlineColour, ...] = (
    OutlineColour("red", (230, 25, 75)),
    OutlineColour("green", (60, 180, 75)),
    OutlineColour("blue", (0, 130, 200)),
    OutlineColour("magenta", (240, 50, 230)),
    OutlineColour("cyan", (70, 240, 240)),
)


def _jet(values: NDArray[np.float64]) -> NDArray[np.uint8]:
    """The classic piecewise-linear jet map (blue, cyan, yellow, red) for values in [0, 1]."""
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peak at 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * values[..., None] - centres), 0.0, 1.0)
    lut: NDArray[np.uint8] = np.rint(rgb * 255.0).astype(np.uint8)
    return lut


JET_LUT: NDArray[np.uint8] = _jet(np.linspace(0.0, 1.0, 256))
"""256 x 3 lookup table: index ``round(255 * value)``."""


def check_heatmap(heatmap: object, shape: tuple[int, int]) -> NDArray[np.floating]:
    """A finite 2-D float heatmap of ``shape`` in [0, 1], or ValueError.

    Interpolation rounding up to ``HEATMAP_TOLERANCE`` outside [0, 1] is clipped, not refused.
    """
    if not isinstance(heatmap, np.ndarray):
        raise TypeError("heatmap must be a numpy array")
    if heatmap.dtype.kind != "f":
        raise TypeError(f"heatmap must be a float array, got {heatmap.dtype}")
    if heatmap.shape != shape:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from the image's {shape}")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap contains NaN or infinite values")
    low, high = float(heatmap.min()), float(heatmap.max())
    if low < -HEATMAP_TOLERANCE or high > 1.0 + HEATMAP_TOLERANCE:
        raise ValueError(f"heatmap values must be in [0, 1], got [{low:.6g}, {high:.6g}]")
    if low < 0.0 or high > 1.0:
        clipped: NDArray[np.floating] = np.clip(heatmap, 0.0, 1.0)
        return clipped
    return heatmap


def check_display_image(display_image: object) -> NDArray[np.uint8]:
    """A 2-D uint8 greyscale (MONOCHROME2) image, or TypeError/ValueError."""
    if not isinstance(display_image, np.ndarray):
        raise TypeError("display_image must be a numpy array")
    if display_image.dtype != np.uint8:
        raise TypeError(f"display_image must be uint8, got {display_image.dtype}")
    if display_image.ndim != 2 or 0 in display_image.shape:
        raise ValueError(f"display_image must be a non-empty 2-D array, got {display_image.shape}")
    return display_image


def apply_colormap(heatmap: NDArray[np.floating]) -> NDArray[np.uint8]:
    """RGB colours (H x W x 3, uint8) of a [0, 1] heatmap through the jet lookup table."""
    index = np.rint(np.asarray(heatmap, dtype=np.float64) * 255.0).astype(np.intp)
    colours: NDArray[np.uint8] = JET_LUT[np.clip(index, 0, 255)]
    return colours


# Rows blended per step: the float64 temporaries of one step stay in cache.
_BLEND_ROWS = 64


@functools.cache
def blend_table() -> NDArray[np.uint8]:
    """65536 x 3: the blended colour of grey level ``g`` under heatmap level ``q`` (the jet index,
    ``round(255 * heatmap)``) at row ``256 * q + g``; opacity ``MAX_ALPHA * q / 255``.

    One lookup per pixel instead of float arithmetic over the whole image. Against blending with
    the exact heatmap value the opacity differs by at most ``MAX_ALPHA / 510``, so a channel by at
    most 1 of 255.
    """
    level = np.arange(256, dtype=np.float32)
    alpha = (level / np.float32(255.0) * np.float32(MAX_ALPHA))[:, np.newaxis, np.newaxis]
    grey = level[np.newaxis, :, np.newaxis]
    colour = JET_LUT.astype(np.float32)[:, np.newaxis, :]
    blended = grey * (np.float32(1.0) - alpha) + colour * alpha
    table: NDArray[np.uint8] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    table = table.reshape(256 * 256, 3)
    table.setflags(write=False)  # cached: shared by every call
    return table


def blend_heatmap(
    display_image: NDArray[np.uint8],
    heatmap: NDArray[np.floating],
    out: NDArray[np.uint8] | None = None,
) -> NDArray[np.uint8]:
    """The grey image with the heatmap's colours laid over it, opacity growing with the heatmap.

    Written into ``out`` (rows x columns x 3, uint8) when given, e.g. the top of a pixel matrix
    that also holds the legend, so the blended image is not copied again.
    """
    rows, cols = display_image.shape
    if out is None:
        out = np.empty((rows, cols, 3), dtype=np.uint8)
    if out.shape != (rows, cols, 3) or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {(rows, cols, 3)}, got {out.dtype} {out.shape}")
    table = blend_table()
    for start in range(0, rows, _BLEND_ROWS):
        stop = start + _BLEND_ROWS
        # The jet index exactly as apply_colormap makes it: round(255 * heatmap) in float64.
        level = np.multiply(heatmap[start:stop], 255.0, dtype=np.float64)
        np.rint(level, out=level)
        np.clip(level, 0.0, 255.0, out=level)
        key = level.astype(np.uint16)
        key <<= 8
        key |= display_image[start:stop]
        np.take(table, key, axis=0, out=out[start:stop], mode="clip")
    return out


@dataclass(frozen=True)
class LegendText:
    """What the legend says, top to bottom; the warning line is never shortened."""

    title: str
    detail: str
    warning: str = AI_RESULT_WARNING


# Rendered lines a font keeps: legends repeat most of theirs from image to image (the model, the
# warning, the colour bar's labels), and FreeType's rendering was most of a legend's time.
_LINES_KEPT = 64


class _RememberingFont(ImageFont.FreeTypeFont):
    """A FreeType font that keeps the masks and lengths it has computed, by their arguments.

    ``ImageDraw.text`` draws whatever mask ``getmask2`` returns, so a remembered mask draws the
    same pixels as a fresh one. Masks for ``RGBA`` (embedded colour) are not kept: ImageDraw
    changes those.
    """

    def __init__(self, font: ImageFont.FreeTypeFont) -> None:
        super().__init__(
            io.BytesIO(font.font_bytes), font.size, font.index, font.encoding, font.layout_engine
        )
        self._mask = functools.lru_cache(maxsize=_LINES_KEPT)(super().getmask2)
        self._length = functools.lru_cache(maxsize=4 * _LINES_KEPT)(super().getlength)

    def getmask2(  # type: ignore[override]
        self, text: str, mode: str = "", *args: Any, **kwargs: Any
    ) -> tuple[Any, tuple[int, int]]:
        if mode == "RGBA":
            return super().getmask2(text, mode, *args, **kwargs)
        arguments = tuple(_hashable(a) for a in args)
        named = {k: _hashable(v) for k, v in kwargs.items()}
        return self._mask(text, mode, *arguments, **named)

    def getlength(self, text: str, *args: Any, **kwargs: Any) -> float:  # type: ignore[override]
        return float(self._length(text, *args, **kwargs))


def _hashable(value: object) -> object:
    """Lists (``features``) as tuples, so that the arguments can key a cache."""
    return tuple(value) if isinstance(value, list) else value


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font; without FreeType it would be a fixed 11 px bitmap font."""
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("Pillow lacks FreeType support: the legend would not scale")
    return _RememberingFont(font)


def _fits(font: ImageFont.FreeTypeFont, text: str, width: float) -> bool:
    return font.getlength(text) <= width


def _shorten(font: ImageFont.FreeTypeFont, text: str, width: float) -> str:
    """``text`` cut at the end with an ellipsis so that it fits ``width`` pixels."""
    if _fits(font, text, width):
        return text
    for end in range(len(text) - 1, 0, -1):
        candidate = text[:end].rstrip() + _ELLIPSIS
        if _fits(font, candidate, width):
            return candidate
    return _ELLIPSIS


def font_size_for_width(width: int) -> int:
    """A legend font size that stays readable when a viewer scales the image to fit a screen."""
    return max(MIN_FONT_PX, min(MAX_FONT_PX, round(width / 32)))


def render_legend(width: int, text: LegendText) -> NDArray[np.uint8]:
    """A band (rows x ``width`` x 3) with the legend text and, when there is room, a colour bar.

    The font shrinks until the lines fit; below ``MIN_FONT_PX`` the title and detail are shortened
    with an ellipsis, and a band too narrow for the whole warning line is refused (ValueError).
    """
    if width < 1:
        raise ValueError("legend width must be positive")
    size = font_size_for_width(width)
    pad = max(4, size // 2)
    with_bar = width >= 320
    bar_width = width // 5 if with_bar else 0
    text_width = width - 2 * pad - (bar_width + pad if with_bar else 0)
    lines: Sequence[str] = (text.title, text.detail, text.warning)
    font = _font(size)
    while size > MIN_FONT_PX and not all(_fits(font, line, text_width) for line in lines):
        size -= 1
        font = _font(size)
    if not _fits(font, text.warning, text_width):
        raise ValueError(f"image is {width} pixels wide: too narrow for a readable legend")
    title = _shorten(font, text.title, text_width)
    detail = _shorten(font, text.detail, text_width)

    ascent, descent = font.getmetrics()
    line_height = ascent + descent + max(2, size // 4)
    rule = max(1, size // 12)
    height = rule + pad + 3 * line_height + pad
    band = Image.new("RGB", (width, height), _BAND_BACKGROUND)
    draw = ImageDraw.Draw(band)
    draw.rectangle((0, 0, width - 1, rule - 1), fill=_RULE)
    y = rule + pad
    for line, colour in ((title, _TITLE), (detail, _DETAIL), (text.warning, _WARNING)):
        draw.text((pad, y), line, font=font, fill=colour)
        y += line_height
    if with_bar:
        _draw_colour_bar(
            band,
            font,
            left=width - pad - bar_width,
            top=rule + pad,
            size=size,
            bar_width=bar_width,
            line_height=line_height,
        )
    return np.asarray(band, dtype=np.uint8).copy()


def _draw_colour_bar(
    band: Image.Image,
    font: ImageFont.FreeTypeFont,
    *,
    left: int,
    top: int,
    size: int,
    bar_width: int,
    line_height: int,
) -> None:
    """The jet scale from 0 to 1, so a reader can tell which colours mean a strong response."""
    bar_top = top + line_height // 4
    gradient = JET_LUT[np.rint(np.linspace(0.0, 255.0, bar_width)).astype(np.intp)]
    strip = np.ascontiguousarray(np.repeat(gradient[None, :, :], line_height, axis=0))
    band.paste(Image.fromarray(strip), (left, bar_top))
    draw = ImageDraw.Draw(band)
    label_y = bar_top + line_height + max(2, size // 4)
    caption = "heatmap"
    draw.text((left, label_y), "0", font=font, fill=_DETAIL)
    draw.text(
        (left + (bar_width - font.getlength(caption)) / 2, label_y),
        caption,
        font=font,
        fill=_DETAIL,
    )
    draw.text((left + bar_width - font.getlength("1"), label_y), "1", font=font, fill=_DETAIL)


def compose_overlay(
    display_image: NDArray[np.uint8], heatmap: NDArray[np.floating], text: LegendText
) -> NDArray[np.uint8]:
    """The blended image with the legend band appended below it (rows grow, columns stay)."""
    band = render_legend(display_image.shape[1], text)
    pixels = with_band(display_image.shape, band)
    blend_heatmap(display_image, heatmap, out=pixels[: display_image.shape[0]])
    return pixels


@dataclass(frozen=True)
class Reduction:
    """How a source image is shown in an overlay: its shape there, and the factors that take a
    point in source pixels (x, y) to overlay pixels."""

    shape: tuple[int, int]
    x_scale: float = 1.0
    y_scale: float = 1.0

    @property
    def reduced(self) -> bool:
        return self.x_scale != 1.0 or self.y_scale != 1.0


def reduction_for(shape: tuple[int, int], max_side: int | None) -> Reduction:
    """The overlay's shape for a source of ``shape``: the same, or scaled down (aspect kept) so
    that its longest side is ``max_side`` pixels."""
    rows, cols = shape
    if max_side is None or max(rows, cols) <= max_side:
        return Reduction(shape)
    factor = max_side / max(rows, cols)
    reduced = (max(1, round(rows * factor)), max(1, round(cols * factor)))
    return Reduction(reduced, reduced[1] / cols, reduced[0] / rows)


# Reduced greys by (id of the source array, shape): an image's overlays (three heatmaps and the
# summary) each show the same reduced grey, 4-5 ms to make at 2048². An entry goes with its array.
_REDUCED_GREYS: dict[tuple[int, tuple[int, int]], NDArray[np.uint8]] = {}


def reduce_grey(image: NDArray[np.uint8], reduction: Reduction) -> NDArray[np.uint8]:
    """``image`` at the reduction's shape, each pixel the mean of the source pixels it covers.

    Made once per image and shape while ``image`` lives (read-only: it is shared), so the
    overlays of one image do not each make it."""
    if not reduction.reduced:
        return image
    key = (id(image), reduction.shape)
    cached = _REDUCED_GREYS.get(key)
    if cached is not None:
        return cached
    rows, cols = reduction.shape
    resized = Image.fromarray(image).resize((cols, rows), Image.Resampling.BOX)
    reduced = np.asarray(resized, dtype=np.uint8)
    if image.flags.writeable:  # one that may change under the cache is not cached
        return reduced
    reduced.flags.writeable = False
    _REDUCED_GREYS[key] = reduced
    weakref.finalize(image, _REDUCED_GREYS.pop, key, None)
    return reduced


def reduce_heatmap(heatmap: NDArray[np.floating], reduction: Reduction) -> NDArray[np.float32]:
    """A [0, 1] heatmap at the reduction's shape (area means, so still within [0, 1]); one made
    at that shape already (``workers.analysis``) is used as it is."""
    values = np.asarray(heatmap, dtype=np.float32)
    if not reduction.reduced or values.shape == reduction.shape:
        return values
    rows, cols = reduction.shape
    resized = Image.fromarray(values).resize((cols, rows), Image.Resampling.BOX)  # mode F
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def with_band(shape: tuple[int, ...], band: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """An RGB pixel matrix of an image of ``shape`` with ``band`` already in its last rows; the
    image's rows are left for the caller to fill (no concatenation of a 3 MB image)."""
    rows, cols = shape
    pixels = np.empty((rows + band.shape[0], cols, 3), dtype=np.uint8)
    pixels[rows:] = band
    return pixels


# -- summary image: region outlines and a legend with a swatch per finding ---------------------


def outline_width_for(shape: tuple[int, int]) -> int:
    """Outline thickness in pixels: 4 on a full-size radiograph, 3 on a small image."""
    return 4 if min(shape) >= 512 else 3


def pixel_box(
    box: tuple[float, float, float, float], shape: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Whole pixels ``(left, top, right, bottom)`` (inclusive) covering the box ``(x0, y0, x1, y1)``
    (x1, y1 exclusive), clipped to an image of ``shape``; None when nothing of it is inside."""
    rows, columns = shape
    x0, y0, x1, y1 = box
    left, top = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    right, bottom = min(columns, int(np.ceil(x1))) - 1, min(rows, int(np.ceil(y1))) - 1
    if left > right or top > bottom:
        return None
    return left, top, right, bottom


def draw_outline(
    rgb: NDArray[np.uint8], box: tuple[int, int, int, int], colour: RGB, width: int
) -> None:
    """Paint (in place) a rectangle outline ``width`` pixels thick just inside the pixel ``box``."""
    left, top, right, bottom = box
    paint = np.array(colour, dtype=np.uint8)
    rgb[top : min(bottom + 1, top + width), left : right + 1] = paint
    rgb[max(top, bottom + 1 - width) : bottom + 1, left : right + 1] = paint
    rgb[top : bottom + 1, left : min(right + 1, left + width)] = paint
    rgb[top : bottom + 1, max(left, right + 1 - width) : right + 1] = paint


def grey_to_rgb(
    display_image: NDArray[np.uint8], out: NDArray[np.uint8] | None = None
) -> NDArray[np.uint8]:
    """The MONOCHROME2 image as RGB with R = G = B (into ``out`` when given)."""
    if out is None:
        out = np.empty((*display_image.shape, 3), dtype=np.uint8)
    for channel in range(3):  # three strided copies: faster than np.repeat or a broadcast
        out[..., channel] = display_image
    return out


@dataclass(frozen=True)
class SummaryEntry:
    """One legend line of the summary image; ``colour`` is its outline's, None when not outlined."""

    text: str
    colour: RGB | None = None


def render_summary_legend(
    width: int, entries: Sequence[SummaryEntry], detail: str, warning: str = AI_RESULT_WARNING
) -> NDArray[np.uint8]:
    """A band (rows x ``width`` x 3): a line per entry, led by its colour swatch, then the model
    line and the warning. Fonts shrink and lines shorten as in ``render_legend``; a band too
    narrow for the warning is refused (ValueError)."""
    if width < 1:
        raise ValueError("legend width must be positive")
    if not entries:
        raise ValueError("a summary legend needs at least one line")
    size = font_size_for_width(width)
    pad = max(4, size // 2)
    text_width = width - 2 * pad

    def swatch_room(font_size: int) -> int:
        return font_size + max(4, font_size // 2)

    font = _font(size)
    while size > MIN_FONT_PX and not (
        all(_fits(font, e.text, text_width - swatch_room(size)) for e in entries)
        and _fits(font, detail, text_width)
        and _fits(font, warning, text_width)
    ):
        size -= 1
        font = _font(size)
    if not _fits(font, warning, text_width):
        raise ValueError(f"image is {width} pixels wide: too narrow for a readable legend")
    indent = swatch_room(size)
    lines = [_shorten(font, e.text, text_width - indent) for e in entries]
    detail = _shorten(font, detail, text_width)

    ascent, descent = font.getmetrics()
    line_height = ascent + descent + max(2, size // 4)
    rule = max(1, size // 12)
    height = rule + pad + (len(entries) + 2) * line_height + pad
    band = Image.new("RGB", (width, height), _BAND_BACKGROUND)
    draw = ImageDraw.Draw(band)
    draw.rectangle((0, 0, width - 1, rule - 1), fill=_RULE)
    y = rule + pad
    for entry, line in zip(entries, lines, strict=True):
        if entry.colour is not None:
            top = y + max(0, (ascent - size) // 2 + 1)
            draw.rectangle((pad, top, pad + size - 1, top + size - 1), fill=entry.colour)
        draw.text((pad + indent, y), line, font=font, fill=_TITLE)
        y += line_height
    for text, colour in ((detail, _DETAIL), (warning, _WARNING)):
        draw.text((pad, y), text, font=font, fill=colour)
        y += line_height
    return np.asarray(band, dtype=np.uint8).copy()
