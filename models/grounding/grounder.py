"""Phrase -> region: the classifier's CAM for the phrase's findings, restricted to its place.

:class:`CamPriorGrounder` grounds every phrase of a report on one image:

- a negated phrase gets no region (``reason="negated"``), nor does a phrase that names neither a
  finding nor a location (``reason="no finding or location"``);
- the anatomical prior is the union of the phrase's location zones on its side (both sides when
  none is said); with no location, the finding's natural region (Cardiomegaly: the heart; Hernia:
  the retrocardiac region; Effusion: the lung bases) or else the lungs on that side; slightly
  blurred so the region's edge follows the CAM rather than the mask, and highest at its deepest
  point (so the prior alone points at the middle of the place);
- the heatmap is the CAM of the phrase's findings (the maximum of their normalised maps, floored
  at ``CAM_FLOOR``) times the prior, renormalised to [0, 1]; a phrase with a location but no
  finding (or a finding the classifier does not report) grounds to the prior alone;
- box and polygon outline the largest connected region at half the heatmap's maximum; the
  polygon is that region's convex hull.

The interface ``ground(image, text) -> list[GroundedPhrase]`` (:class:`Grounder`) lets a trained
image-text model (BioViL-style patch/text similarity) replace this one later.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

from models.cam import normalise_map
from models.grounding.lungs import LungFields, segment_lung_fields
from models.grounding.phrases import Phrase, parse_report

FloatArray = npt.NDArray[np.float32]
ClassifyResult = tuple[dict[str, float], dict[str, FloatArray]]
Classify = Callable[[npt.NDArray[np.floating]], ClassifyResult]
# The grounding algorithm's own name and version, for results to name beside the classifier's.
GROUNDER_NAME = "radlight-cam-prior-grounder"
GROUNDER_VERSION = "0.1.0"
REGION_LEVEL = 0.5
# Images larger than this (long side, pixels) are grounded on a grid this size, then scaled back.
WORK_SIZE = 512
# The place keeps this much weight where the CAM is zero, so a CAM that points elsewhere leaves
# the place itself lit rather than the edge of the place nearest the CAM's peak.
CAM_FLOOR = 0.1
# Where a finding lies when the phrase does not say (zone names of LungFields.zone).
NATURAL_ZONES: Mapping[str, tuple[str, ...]] = {
    "Cardiomegaly": ("heart",),
    "Hernia": ("retrocardiac",),
    "Effusion": ("base", "costophrenic angle"),
}


@dataclass(frozen=True)
class GroundedPhrase:
    """A phrase and the region it speaks of (or why it has none)."""

    phrase: Phrase
    heatmap: FloatArray | None
    box: tuple[int, int, int, int] | None
    polygon: tuple[tuple[float, float], ...] | None
    score: float | None
    reason: str | None


class Grounder(Protocol):
    """Anything that grounds every phrase of a report on an image."""

    def ground(self, image: npt.NDArray[np.floating], text: str) -> list[GroundedPhrase]: ...


class CamPriorGrounder:
    """The default grounder: classifier CAMs times anatomical priors from the lung fields."""

    def __init__(
        self,
        classify: Classify,
        *,
        segment: Callable[[npt.NDArray[np.floating]], LungFields] = segment_lung_fields,
        parse: Callable[[str], list[Phrase]] = parse_report,
        prior_blur: float = 0.02,
        work_size: int = WORK_SIZE,
        model: str | None = None,
    ) -> None:
        self.classify = classify
        self.model = model  # "name version" of the classifier behind ``classify``, if known
        self.segment = segment
        self.parse = parse
        self.prior_blur = prior_blur
        self.work_size = work_size

    def ground(
        self, image: npt.NDArray[np.floating] | npt.NDArray[np.uint8], text: str
    ) -> list[GroundedPhrase]:
        """Every phrase of ``text`` with its region on ``image`` (2-D, display values in [0, 1],
        or uint8); regions are on the image's own grid whatever its size."""
        image = _check_image(image)
        phrases = self.parse(text)
        if not any(p.groundable and not p.negated for p in phrases):
            return [_ungrounded(p, None) for p in phrases]
        probabilities, cams = self.classify(image)
        shape = (int(image.shape[0]), int(image.shape[1]))
        grid = _work_shape(shape, self.work_size)
        if grid == shape:
            fields = self.segment(image)
            return [self.ground_phrase(p, fields, probabilities, cams) for p in phrases]
        # A large image is grounded on a smaller grid, and each heatmap brought back to it.
        wanted = {f for p in phrases for f in p.findings}
        small_cams = {name: _resize(cam, grid) for name, cam in cams.items() if name in wanted}
        fields = self.segment(_resize(image.astype(np.float32), grid).clip(0.0, 1.0))
        results = []
        for phrase in phrases:
            grounded = self.ground_phrase(phrase, fields, probabilities, small_cams)
            if grounded.heatmap is not None:
                heatmap = normalise_map(_resize(grounded.heatmap, shape).clip(0.0, 1.0))
                box, polygon = outline(heatmap)
                grounded = replace(grounded, heatmap=heatmap, box=box, polygon=polygon)
            results.append(grounded)
        return results

    def ground_phrase(
        self,
        phrase: Phrase,
        fields: LungFields,
        probabilities: Mapping[str, float],
        cams: Mapping[str, FloatArray],
    ) -> GroundedPhrase:
        """One phrase on an image whose lung fields and classifier outputs are known."""
        score = max((probabilities[f] for f in phrase.findings if f in probabilities), default=None)
        if phrase.negated:
            return _ungrounded(phrase, "negated", score)
        if not phrase.groundable:
            return _ungrounded(phrase, "no finding or location", score)
        prior = self.prior(phrase, fields)
        if not prior.any():
            return _ungrounded(phrase, "location not found on this image", score)
        soft = _soften(prior, self.prior_blur)
        maps = [normalise_map(cams[f]) for f in phrase.findings if f in cams]
        heat = soft if not maps else (CAM_FLOOR + (1 - CAM_FLOOR) * np.maximum.reduce(maps)) * soft
        heatmap = normalise_map(heat)
        box, polygon = outline(heatmap)
        return GroundedPhrase(phrase, heatmap, box, polygon, score, None)

    @staticmethod
    def prior(phrase: Phrase, fields: LungFields) -> npt.NDArray[np.bool_]:
        """The anatomical mask a phrase speaks of (see the module doc)."""
        zones = phrase.locations or next(
            (NATURAL_ZONES[f] for f in phrase.findings if f in NATURAL_ZONES), ("lung",)
        )
        mask = np.zeros(fields.shape, dtype=np.bool_)
        for zone in zones:
            mask |= fields.zone(zone, phrase.laterality)
        return mask


def _check_image(image: npt.NDArray[np.generic]) -> npt.NDArray[np.floating]:
    """A 2-D display image as floats in [0, 1] (uint8 is scaled by 1/255)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim != 2 or min(image.shape) < 8:
        raise ValueError(f"expected a 2-D image of at least 8x8 pixels, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected uint8 or floating-point pixels, got {image.dtype}")
    values: npt.NDArray[np.floating] = np.asarray(image, dtype=np.float32)
    if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError("a floating-point display image must be finite and within [0, 1]")
    return values


def _work_shape(shape: tuple[int, int], work_size: int) -> tuple[int, int]:
    """``shape`` scaled down so its long side is at most ``work_size`` (unchanged if smaller)."""
    scale = work_size / max(shape)
    if scale >= 1.0:
        return shape
    return max(8, round(shape[0] * scale)), max(8, round(shape[1] * scale))


def _resize(values: npt.NDArray[np.floating], shape: tuple[int, int]) -> FloatArray:
    """Bilinear resize of a float map to ``shape`` (rows, cols)."""
    resized = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32)).resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def _ungrounded(phrase: Phrase, reason: str | None, score: float | None = None) -> GroundedPhrase:
    if reason is None:
        reason = "negated" if phrase.negated else "no finding or location"
    return GroundedPhrase(phrase, None, None, None, score, reason)


def _soften(mask: npt.NDArray[np.bool_], blur: float) -> FloatArray:
    sigma = blur * max(mask.shape)
    if sigma <= 0:
        return mask.astype(np.float32)
    soft = np.asarray(ndimage.gaussian_filter(mask.astype(np.float32), sigma=sigma))
    depth = np.asarray(ndimage.distance_transform_edt(mask), dtype=np.float32)
    depth /= max(float(depth.max()), 1.0)
    # The deepest point of the place is its peak, so the prior alone points at its middle.
    soft = np.maximum(soft, mask * np.float32(0.5)) * (0.8 + 0.2 * depth)
    result: FloatArray = np.where(soft >= 1e-3, soft, 0.0).astype(np.float32)
    return result


def outline(
    heatmap: FloatArray, level: float = REGION_LEVEL
) -> tuple[tuple[int, int, int, int] | None, tuple[tuple[float, float], ...] | None]:
    """Box ``(x, y, w, h)`` and convex outline of the largest region ``>= level * max``."""
    peak = float(heatmap.max())
    if peak <= 0.0:
        return None, None
    labels, count = ndimage.label(heatmap >= level * peak)
    if count == 0:
        return None, None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    region = labels == int(np.argmax(sizes)) + 1
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    return box, convex_hull(region)


def convex_hull(region: npt.NDArray[np.bool_]) -> tuple[tuple[float, float], ...]:
    """Convex hull (x, y), counter-clockwise, of a mask's pixel corners (Andrew's monotone chain)."""
    edge = region & ~ndimage.binary_erosion(region)
    ys, xs = np.nonzero(edge)
    corners = {
        (float(x + dx), float(y + dy))
        for x, y in zip(xs, ys, strict=True)
        for dx in (0, 1)
        for dy in (0, 1)
    }
    points = sorted(corners)
    if len(points) <= 2:
        return tuple(points)

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in points:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(points):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return tuple(lower[:-1] + upper[:-1])
