"""Interactive grounding in the API process: which model, which image, and the one model call.

DESIGN.md lets exactly this web request run a model synchronously. The classifier is the one the
registry holds (``RADLIGHT_GROUNDING_MODEL`` names it when several are installed); its ONNX
session and grounder are built once per app and kept. Images come from an upload (PNG or JPEG,
checked for size before decoding, so a decompression bomb is refused unread) or from the instance
store, decoded and windowed by ``dicom_node.pixels`` exactly as the workers do it.
"""

import binascii
import threading
from base64 import b64decode
from collections import OrderedDict
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, UnidentifiedImageError
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Instance
from dicom_node.pixels import to_display_uint8
from models.card import OutputNames
from models.grounding import GroundedPhrase, Grounder, grounder_for
from models.registry import ModelEntry, ModelRegistry
from radlight.errors import ModelError, NotAnalysableError
from radlight.settings import Settings

MIN_SIDE = 64
MAX_SIDE = 8192
MAX_PIXELS = 40_000_000  # refused before decoding: a 1 kB PNG can claim 2^31 pixels
UPLOAD_FORMATS = ("PNG", "JPEG")
FloatImage = NDArray[np.float32]


class InputError(ValueError):
    """The caller's image or text cannot be used; the message says why (HTTP 422)."""


class NotFoundError(LookupError):
    """The stored instance asked for does not exist or its file is gone (HTTP 404)."""


def decode_base64(data: str, max_bytes: int) -> bytes:
    """The bytes of a standard base64 string (whitespace allowed), refusing anything else."""
    compact = "".join(data.split())
    if len(compact) > (max_bytes + 2) // 3 * 4:
        raise InputError(f"the image is larger than {max_bytes} bytes")
    try:
        return b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"image_base64 is not valid base64: {exc}") from None


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        raise InputError(
            f"the image is {width}x{height}; at most {MAX_SIDE} per side and {MAX_PIXELS} "
            "pixels are accepted"
        )
    if min(width, height) < MIN_SIDE:
        raise InputError(f"the image is {width}x{height}; at least {MIN_SIDE} per side is needed")


def decode_upload(data: bytes) -> FloatImage:
    """A PNG or JPEG as a greyscale float image in [0, 1]; size checked from the header first."""
    try:
        with Image.open(BytesIO(data)) as image:
            if image.format not in UPLOAD_FORMATS:
                raise InputError(f"the image is {image.format or 'unknown'}; send PNG or JPEG")
            _check_size(*image.size)
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit greyscale PNG (Pillow opens it as I;16 or I): full range is 0..65535.
                values = np.asarray(image, dtype=np.float32)
                wide: FloatImage = np.clip(values / np.float32(65535), 0, 1).astype(np.float32)
                return wide
            grey: FloatImage = np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255)
            return grey
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"the image claims too many pixels (a decompression bomb?): {exc}"
        ) from None
    except UnidentifiedImageError as exc:
        raise InputError(f"the data is not a PNG or JPEG image: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"the image cannot be decoded: {exc}") from None


def stored_instance(session: Session, sop_instance_uid: str) -> Instance:
    instance = session.scalars(
        select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
    ).one_or_none()
    if instance is None:
        raise NotFoundError(f"no stored instance {sop_instance_uid}")
    return instance


def stored_path(store_dir: Path, relative_path: str) -> Path:
    store = store_dir.resolve()
    path = (store / relative_path).resolve()
    if not path.is_relative_to(store) or not path.is_file():
        raise NotFoundError("the instance's file is missing from the store")
    return path


def stored_display(store_dir: Path, instance: Instance) -> NDArray[np.uint8]:
    """The stored instance as the workers see it: decoded, windowed, 8-bit (InputError when it
    is not a greyscale image)."""
    path = stored_path(store_dir, instance.relative_path)
    try:
        ds = dcmread(path)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise InputError(f"the stored instance cannot be read: {exc}") from None
    if "PixelData" not in ds:
        raise InputError("the stored instance has no pixel data (not an image)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InputError("multi-frame images are not supported")
    _check_size(cols, rows)
    try:
        return to_display_uint8(ds)
    except NotAnalysableError as exc:
        raise InputError(str(exc)) from None


def to_unit(display: NDArray[np.uint8]) -> FloatImage:
    """An 8-bit display image as the float image in [0, 1] the grounder reads."""
    unit: FloatImage = display.astype(np.float32) / np.float32(255)
    return unit


def choose_model(registry: ModelRegistry, wanted: str | None) -> ModelEntry:
    """The classifier grounding uses: ``wanted``'s latest version, else the only one installed."""
    if wanted:
        return registry.get(wanted)
    names = sorted({e.name for e in registry.list() if isinstance(e.card.outputs, OutputNames)})
    if not names:
        raise ModelError("no classifier is installed (radlight models import installs one)")
    if len(names) > 1:
        raise ModelError(
            f"several classifiers are installed ({', '.join(names)}); set "
            "RADLIGHT_GROUNDING_MODEL to the one grounding should use"
        )
    return registry.get(names[0])


def make_grounder(entry: ModelEntry) -> Grounder:
    """The grounder over ``entry``'s classifier (its ONNX session is cached by models.runtime)."""
    return grounder_for(entry)


@dataclass(frozen=True)
class GroundingRun:
    """What one grounding call made, and with which model."""

    model_name: str
    model_version: str
    model_sha256: str
    phrases: list[GroundedPhrase]


class GroundingService:
    """Grounds images and report text with the registry's classifier; kept on the app's state.

    Results for stored instances are cached by (instance, text, model), so the viewer's page and
    its overlay images come from one model call.
    """

    CACHE_SIZE = 32
    DISPLAY_CACHE_SIZE = 4

    def __init__(self, settings: Settings) -> None:
        self._registry = ModelRegistry(settings.models_dir)
        self._wanted = settings.grounding_model
        self._lock = threading.Lock()
        self._grounders: dict[tuple[str, str, str], Grounder] = {}
        self._results: OrderedDict[tuple[str, str, str, str], GroundingRun] = OrderedDict()
        self._displays: OrderedDict[tuple[str, str], NDArray[np.uint8]] = OrderedDict()
        self._store_dir = settings.store_dir

    def display(self, instance: Instance) -> NDArray[np.uint8]:
        """:func:`stored_display` of ``instance``, kept for the few images last shown (the
        viewer's page, image and overlays read the same one)."""
        key = (instance.sop_instance_uid, instance.sha256)
        with self._lock:
            cached = self._displays.get(key)
            if cached is not None:
                self._displays.move_to_end(key)
                return cached
        display = stored_display(self._store_dir, instance)
        with self._lock:
            self._displays[key] = display
            while len(self._displays) > self.DISPLAY_CACHE_SIZE:
                self._displays.popitem(last=False)
        return display

    def entry(self) -> ModelEntry:
        return choose_model(self._registry, self._wanted)

    def _grounder(self, entry: ModelEntry) -> Grounder:
        key = (entry.name, entry.version, entry.sha256)
        with self._lock:
            grounder = self._grounders.get(key)
            if grounder is None:
                grounder = make_grounder(entry)
                self._grounders = {key: grounder}  # one model at a time
            return grounder

    def ground(self, image: FloatImage, text: str) -> GroundingRun:
        """Ground ``text`` on ``image`` (2-D, [0, 1]); ModelError when no model can be used."""
        entry = self.entry()
        phrases = self._grounder(entry).ground(image, text)
        return GroundingRun(entry.name, entry.version, entry.sha256, list(phrases))

    def ground_stored(
        self, sop_instance_uid: str, display: NDArray[np.uint8], text: str
    ) -> GroundingRun:
        """Like :meth:`ground` for a stored instance's display image, cached."""
        entry = self.entry()
        key = (sop_instance_uid, text, entry.name, entry.version)
        with self._lock:
            cached = self._results.get(key)
            if cached is not None and cached.model_sha256 == entry.sha256:
                self._results.move_to_end(key)
                return cached
        run = self.ground(to_unit(display), text)
        with self._lock:
            self._results[key] = run
            while len(self._results) > self.CACHE_SIZE:
                self._results.popitem(last=False)
        return run


def heatmap_png(heatmap: NDArray[np.floating]) -> bytes:
    """A heatmap in [0, 1] as an 8-bit greyscale PNG on the image grid."""
    grey = np.round(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = BytesIO()
    Image.fromarray(grey).save(out, format="PNG", optimize=False)
    return out.getvalue()


OVERLAY_RGB = (255, 140, 0)  # orange: visible on grey and distinct from the red outline
OUTLINE_RGBA = (255, 32, 32, 255)


def overlay_png(phrase: GroundedPhrase, shape: tuple[int, int], max_side: int) -> bytes:
    """A transparent PNG the size of the shown image: the heatmap in orange (alpha = heat) and
    the region's outline in red; fully transparent for a phrase without a region."""
    rows, cols = shape
    scale = min(1.0, max_side / max(rows, cols))
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    rgba = np.zeros((rows, cols, 4), dtype=np.uint8)
    if phrase.heatmap is not None:
        heat = np.clip(np.asarray(phrase.heatmap, dtype=np.float32), 0.0, 1.0)
        rgba[..., :3] = OVERLAY_RGB
        rgba[..., 3] = np.round(heat * 170.0).astype(np.uint8)
    image = Image.fromarray(rgba, mode="RGBA").resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    width = max(2, round(3 * max(size) / 1024))
    if phrase.polygon:
        points = [(x * scale, y * scale) for x, y in phrase.polygon]
        draw.line([*points, points[0]], fill=OUTLINE_RGBA, width=width)
    elif phrase.box is not None:
        x, y, w, h = phrase.box
        draw.rectangle(
            [x * scale, y * scale, (x + w) * scale, (y + h) * scale],
            outline=OUTLINE_RGBA,
            width=width,
        )
    out = BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def display_png(display: NDArray[np.uint8], max_side: int) -> bytes:
    """The stored image as the viewer shows it: 8-bit grey, longest side at most ``max_side``."""
    image = Image.fromarray(display)
    image.thumbnail((max_side, max_side))
    out = BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
