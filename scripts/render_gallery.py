"""Render every kind of result object RadLight sends, with the tools a reader or a workstation
would use, for docs/RESULTS.md.

The objects are made by the worker's own code (``workers.analysis.build_results`` and
``not_analysed``, linked as a job's objects are) from synthetic findings: no model runs. The
source is a synthetic chest phantom made here (12-bit DX, deterministic), because the licence of
the real images in ../shared/assets does not let us publish pixels derived from them; with
``--source PATH`` the same objects are made over a real DICOM image and written to a git-ignored
folder for local viewing.

Pictures, each downscaled to ``--width`` pixels (the SR pages to ``SR_WIDTH``):

- source, heatmap SC (lossless and JPEG baseline), summary SC, SEG frames: Orthanc's own preview
  PNG (``/instances/{id}/preview``, ``/frames/{n}/preview``);
- findings SR and not-analysed SR: dcmtk's ``dsr2html``, photographed by headless Chromium (when
  there is no Chromium, the HTML alone);
- GSPS: dcmtk's ``dcmp2pgm`` renders the source through the presentation state; dcmtk does not
  burn graphics into that bitmap but hands the activated overlay plane out as ``ovl_*.pgm``,
  which is laid over the render here (the text labels stay in the GSPS: see the page).

Usage: ``python scripts/render_gallery.py [--out DIR] [--source DICOM] [--width PIXELS]``
(``make gallery`` writes docs/results/).
"""

import argparse
import contextlib
import copy
import datetime
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from demo import ORTHANC, start_orthanc  # noqa: E402

from db.models import ResultKind, SCEncoding  # noqa: E402
from models.labels import CHEST_XRAY14_LABELS  # noqa: E402
from radlight.errors import NotAnalysableError  # noqa: E402
from radlight.uids import deterministic_uid  # noqa: E402
from workers.analysis import (  # noqa: E402
    BuiltResult,
    JobIdentity,
    ResultOptions,
    build_results,
    not_analysed,
)
from workers.imaging import load_frontal_chest  # noqa: E402
from workers.results.common import AlgorithmInfo, FindingScore  # noqa: E402
from workers.results.regions import FindingResult, ImageFindings, heatmap_region  # noqa: E402

DSR2HTML = "/usr/bin/dsr2html"
DSRDUMP = "/usr/bin/dsrdump"
DCMP2PGM = "/usr/bin/dcmp2pgm"
CHROMIUM = "/usr/bin/chromium"
DEFAULT_OUT = REPO_ROOT / "docs" / "results"
LOCAL_OUT = REPO_ROOT / "radlight-data" / "gallery"  # git-ignored: pictures of a real image
DEFAULT_WIDTH = 512
SR_WIDTH = 760
SR_HEIGHT = 1500  # the top of each SR page: header, observer, library, first measurements
PALETTE_COLOURS = 256
SEED = 20240506
WHEN = datetime.datetime(2024, 5, 6, 9, 30, 0)
# No model runs: the findings are made up, and the objects say so in every legend and header.
ALGORITHM = AlgorithmInfo(
    name="synthetic-findings",
    version="gallery",
    sha256=hashlib.sha256(b"RadLight gallery: synthetic findings, no model").hexdigest(),
)
# Scores for every ChestX-ray14 label; two are present at the 0.5 operating threshold.
SCORES = {
    "Atelectasis": 0.21,
    "Cardiomegaly": 0.81,
    "Effusion": 0.66,
    "Infiltration": 0.34,
    "Mass": 0.08,
    "Nodule": 0.12,
    "Pneumonia": 0.17,
    "Pneumothorax": 0.03,
    "Consolidation": 0.19,
    "Edema": 0.27,
    "Emphysema": 0.05,
    "Fibrosis": 0.06,
    "Pleural_Thickening": 0.14,
    "Hernia": 0.02,
}
THRESHOLD = 0.5
# Where each present finding's synthetic heatmap peaks: (row, column) fractions of the image and
# the spread. The heart sits right of centre on a PA image (the patient's left); the effusion
# fills the costophrenic angle on the image's left (the patient's right).
HOTSPOTS = {"Cardiomegaly": ((0.64, 0.57), 0.11), "Effusion": ((0.78, 0.26), 0.08)}
OPTIONS = ResultOptions(
    max_overlays_per_image=3,
    default_threshold=THRESHOLD,
    segmentation=True,
    presentation_state=True,
    jpeg_copies=True,
)


# -- the synthetic source ---------------------------------------------------------------------


def _ellipse(
    shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float]
) -> NDArray[np.float64]:
    """A soft-edged ellipse mask (1 inside, 0 outside) at fractions of the image."""
    rows, columns = shape
    yy, xx = np.mgrid[0:rows, 0:columns]
    distance = ((yy / rows - centre[0]) / axes[0]) ** 2 + (
        (xx / columns - centre[1]) / axes[1]
    ) ** 2
    mask: NDArray[np.float64] = np.clip((1.0 - distance) * 8.0, 0.0, 1.0)
    return mask


def _smooth(values: NDArray[np.float64], sigma: float) -> NDArray[np.float64]:
    """A Gaussian blur by FFT (numpy only), wrapping at the edges."""
    rows, columns = values.shape
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.fftfreq(columns)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    blurred: NDArray[np.float64] = np.real(np.fft.ifft2(np.fft.fft2(values) * kernel))
    return blurred


def _layer(
    image: NDArray[np.float64], value: float | NDArray[np.float64], mask: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``value`` laid over ``image`` where ``mask`` is 1 (softly where it is between 0 and 1)."""
    layered: NDArray[np.float64] = image * (1.0 - mask) + value * mask
    return layered


def phantom_pixels(rows: int = 1024, columns: int = 1024, seed: int = SEED) -> NDArray[np.uint16]:
    """A 12-bit chest-like radiograph (MONOCHROME2: dense is bright): torso, lungs with ribs,
    diaphragm domes, mediastinum, heart, spine and clavicles, with smooth noise. Deterministic."""
    shape = (rows, columns)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns] / np.array([rows, columns])[:, None, None]
    torso = _ellipse(shape, (0.6, 0.5), (0.6, 0.46))
    image = _layer(np.full(shape, 150.0), 2300.0, torso)  # air, then soft tissue
    # Diaphragm domes, the right (image left) a little higher; below them the abdomen.
    dome = 0.70 + 0.13 * (2.0 * np.abs(xx - 0.5 + 0.22 * np.sign(xx - 0.5)) / 0.44) ** 2
    dome += 0.02 * (xx > 0.5)
    above = np.clip((dome - yy) * 60.0, 0.0, 1.0)
    lungs = np.maximum(
        _ellipse(shape, (0.46, 0.3), (0.36, 0.17)), _ellipse(shape, (0.46, 0.7), (0.36, 0.17))
    )
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * (yy * 9.0 - 2.5 * (xx - 0.5) ** 2))) ** 6
    image = _layer(image, 950.0 + 380.0 * ribs, lungs * above)
    image = _layer(image, 2550.0, _ellipse(shape, (0.40, 0.5), (0.32, 0.06)))  # mediastinum
    image = _layer(image, 2500.0, _ellipse(shape, (0.63, 0.56), (0.15, 0.17)) * above)  # heart
    image += 250.0 * _ellipse(shape, (0.55, 0.5), (0.55, 0.028)) * torso  # spine
    for side in (-1.0, 1.0):  # clavicles, slanting up towards the shoulders
        slope = yy - (0.19 - 0.1 * np.abs(xx - 0.5))
        band = np.clip(1.0 - np.abs(slope) / 0.011, 0.0, 1.0)
        image += 450.0 * band * ((xx - 0.5) * side > 0.03) * (np.abs(xx - 0.5) < 0.34)
    image = _smooth(image, 2.5)
    image += 40.0 * _smooth(rng.standard_normal(shape), 10.0) / 0.028
    image += rng.normal(0.0, 14.0, shape)
    pixels: NDArray[np.uint16] = np.clip(np.rint(image), 0, 4095).astype(np.uint16)
    return pixels


def phantom_dataset() -> pydicom.Dataset:
    """The phantom as a DX image of a made-up patient, as a modality would send it."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = deterministic_uid("gallery", "phantom", "image")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = deterministic_uid("gallery", "phantom", "study")
    ds.SeriesInstanceUID = deterministic_uid("gallery", "phantom", "series")
    ds.PatientName = "Phantom^Chest"
    ds.PatientID = "PHANTOM-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate, ds.StudyTime = WHEN.strftime("%Y%m%d"), "090000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "GALLERY1", ""
    ds.StudyDescription = "Synthetic chest phantom (RadLight gallery)"
    ds.Modality, ds.Manufacturer = "DX", "RadLight gallery phantom"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    pixels = phantom_pixels()
    ds.Rows, ds.Columns = pixels.shape
    ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1650, 3000
    ds.PixelData = pixels.tobytes()
    return ds


def lateral_copy(source: pydicom.Dataset) -> pydicom.Dataset:
    """The same image sent as a lateral view: the worker does not analyse it."""
    lateral = copy.deepcopy(source)
    lateral.SOPInstanceUID = deterministic_uid(str(source.SOPInstanceUID), "gallery-lateral")
    lateral.SeriesInstanceUID = deterministic_uid(str(source.SeriesInstanceUID), "gallery-lateral")
    lateral.file_meta.MediaStorageSOPInstanceUID = lateral.SOPInstanceUID
    lateral.ViewPosition = "LL"
    return lateral


# -- the objects ------------------------------------------------------------------------------


def _blob(
    shape: tuple[int, int], centre: tuple[float, float], spread: float
) -> NDArray[np.float32]:
    rows, columns = shape
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = centre[0] * rows, centre[1] * columns
    values = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * (spread * rows) ** 2))
    blob: NDArray[np.float32] = (values / values.max()).astype(np.float32)
    return blob


def synthetic_findings(source: pydicom.Dataset, display: NDArray[np.uint8]) -> ImageFindings:
    """Every label's score; present findings get a Gaussian heatmap at their hot spot."""
    findings = []
    for label in CHEST_XRAY14_LABELS:
        score = FindingScore.for_label(label, SCORES[label])
        if score.probability >= THRESHOLD:
            centre, spread = HOTSPOTS[label]
            heatmap = _blob(display.shape, centre, spread)
            findings.append(FindingResult(score, THRESHOLD, heatmap, heatmap_region(heatmap)))
        else:
            findings.append(FindingResult(score, THRESHOLD))
    return ImageFindings(source=source, display=display, findings=findings)


def build_objects(source: pydicom.Dataset) -> list[BuiltResult]:
    """One analysed job over ``source`` and one not-analysed job over its lateral copy."""
    findings = synthetic_findings(source, load_frontal_chest(source))
    job = JobIdentity(
        job_id=1,
        study_instance_uid=str(source.StudyInstanceUID),
        input_hash=hashlib.sha256(str(source.SOPInstanceUID).encode()).hexdigest(),
        created_at=WHEN,
    )
    results = build_results(job, ALGORITHM, [findings], OPTIONS)
    lateral = lateral_copy(source)
    try:
        load_frontal_chest(lateral)
    except NotAnalysableError as exc:
        reason = str(exc)  # the worker's own words
    else:
        raise RuntimeError("the worker analyses a lateral view: the gallery needs another case")
    lateral_job = JobIdentity(
        job_id=2,
        study_instance_uid=str(source.StudyInstanceUID),
        input_hash=hashlib.sha256(str(lateral.SOPInstanceUID).encode()).hexdigest(),
        created_at=WHEN,
    )
    reasons = {str(lateral.SOPInstanceUID): reason}
    return results + not_analysed(lateral_job, ALGORITHM, [lateral], reasons)


# -- the tools --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrthancRest:
    url: str

    def store(self, data: bytes) -> str:
        response = httpx.post(f"{self.url}/instances", content=data, timeout=60)
        response.raise_for_status()
        answer = response.json()
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"Orthanc did not store the object: {answer}")
        return str(answer["ID"])

    def preview(self, instance: str, frame: int | None = None) -> Image.Image:
        frame_path = "" if frame is None else f"/frames/{frame}"
        path = f"/instances/{instance}{frame_path}/preview"
        response = httpx.get(self.url + path, timeout=60)
        response.raise_for_status()
        return Image.open(io.BytesIO(response.content))


@contextlib.contextmanager
def orthanc(folder: Path) -> Iterator[OrthancRest]:
    """A throw-away Orthanc, started as `make demo` starts its PACS, stopped afterwards."""
    started = start_orthanc(folder)
    if started is None:
        raise SystemExit(f"{ORTHANC} is needed (make setup installs it)")
    process, _, http_port = started
    rest = OrthancRest(f"http://127.0.0.1:{http_port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(rest.url + "/system", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("Orthanc did not start")
            time.sleep(0.2)
        yield rest
    finally:
        process.terminate()
        process.wait(timeout=30)


def _run(arguments: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        list(arguments),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, TCP_NODELAY="1"),
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{arguments[0]} failed:\n{completed.stdout}\n{completed.stderr}")
    return completed


def render_sr(path: Path, out_dir: Path, name: str, work: Path) -> list[str]:
    """dsr2html's page (kept as HTML), dsrdump's tree, and, with Chromium, a picture of the
    page's top; the file names."""
    html = _run([DSR2HTML, str(path)], work).stdout
    (out_dir / f"{name}.html").write_text(html)
    (out_dir / f"{name}-dsrdump.txt").write_text(_run([DSRDUMP, str(path)], work).stdout)
    written = [f"{name}.html", f"{name}-dsrdump.txt"]
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found: {name}.html only, no picture")
        return written
    shot = work / f"{name}-shot.png"
    _run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={SR_WIDTH},{SR_HEIGHT}",
            f"--screenshot={shot}",
            (out_dir / f"{name}.html").resolve().as_uri(),
        ],
        work,
    )
    with Image.open(shot) as image:
        save_png(_trim_white(image.convert("RGB")), out_dir / f"{name}.png", SR_WIDTH)
    return [*written, f"{name}.png"]


def _trim_white(image: Image.Image) -> Image.Image:
    """``image`` without the blank rows below its content."""
    grey = np.asarray(image.convert("L"))
    used = np.nonzero((grey < 250).any(axis=1))[0]
    bottom = int(used.max()) + 16 if used.size else image.height
    return image.crop((0, 0, image.width, min(image.height, bottom)))


def _read_pgm(path: Path) -> NDArray[np.uint8]:
    data = path.read_bytes()
    magic, width, height, maximum, _ = data.split(maxsplit=4)
    if magic != b"P5" or maximum != b"255":
        raise RuntimeError(f"{path.name} is not an 8-bit binary PGM")
    size = int(width) * int(height)
    pixels: NDArray[np.uint8] = np.frombuffer(data[-size:], dtype=np.uint8).reshape(
        int(height), int(width)
    )
    return pixels


def render_gsps(gsps: Path, source: Path, work: Path) -> tuple[Image.Image, str]:
    """dcmp2pgm's render of ``source`` through ``gsps``, with the overlay plane dcmtk extracts
    laid over it in yellow; and dcmp2pgm's account of the annotations (``-v``)."""
    folder = work / "dcmp2pgm"
    folder.mkdir()
    completed = _run([DCMP2PGM, "-v", "-p", str(gsps), str(source), "render.pgm"], folder)
    log = completed.stdout + completed.stderr
    render = _read_pgm(folder / "render.pgm")
    rgb = np.repeat(render[..., None], 3, axis=2)
    for overlay in sorted(folder.glob("ovl_*.pgm")):
        rgb[_read_pgm(overlay) > 0] = (255, 255, 0)
    return Image.fromarray(rgb), log


def save_png(image: Image.Image, path: Path, width: int) -> None:
    """``image`` at ``width`` pixels wide (never enlarged), as a palette PNG for size."""
    if image.width > width:
        image = image.resize(
            (width, round(image.height * width / image.width)), Image.Resampling.LANCZOS
        )
    if image.mode == "RGB":
        image = image.quantize(PALETTE_COLOURS, dither=Image.Dither.NONE)
    image.save(path, optimize=True)


# -- the gallery ------------------------------------------------------------------------------


def _file_name(result: BuiltResult) -> str:
    jpeg = "-jpeg" if result.sc_encoding is SCEncoding.JPEG_BASELINE else ""
    if result.kind is ResultKind.HEATMAP_SC:
        label = str(result.summary["finding"]).lower()
        return f"heatmap-sc-{label}{jpeg}"
    return {
        ResultKind.SUMMARY_SC: f"summary-sc{jpeg}",
        ResultKind.PROBABILITY_SEG: "seg",
        ResultKind.REGION_GSPS: "gsps",
        ResultKind.FINDINGS_SR: "findings-sr",
        ResultKind.NOT_ANALYSED_SR: "not-analysed-sr",
    }[result.kind]


def render(source: pydicom.Dataset, out_dir: Path, width: int) -> list[str]:
    """Write every picture (and the SR pages) to ``out_dir``; return their names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = build_objects(source)
    (out_dir / "cross-references.txt").write_text(cross_references(results))
    written: list[str] = ["cross-references.txt"]
    with tempfile.TemporaryDirectory(prefix="radlight-gallery-") as tmp:
        work = Path(tmp)
        source_path = work / "source.dcm"
        source.save_as(source_path, enforce_file_format=True)
        paths: dict[str, Path] = {}
        for result in results:
            name = _file_name(result)
            paths[name] = work / f"{name}.dcm"
            result.dataset.save_as(paths[name], enforce_file_format=True)
        with orthanc(work / "orthanc") as pacs:
            source_id = pacs.store(source_path.read_bytes())
            save_png(pacs.preview(source_id), out_dir / "source.png", width)
            written.append("source.png")
            for result in results:
                name = _file_name(result)
                if result.kind in (ResultKind.HEATMAP_SC, ResultKind.SUMMARY_SC):
                    instance = pacs.store(paths[name].read_bytes())
                    save_png(pacs.preview(instance), out_dir / f"{name}.png", width)
                    written.append(f"{name}.png")
                elif result.kind is ResultKind.PROBABILITY_SEG:
                    instance = pacs.store(paths[name].read_bytes())
                    segments = int(result.dataset.NumberOfFrames)
                    frames = [pacs.preview(instance, n) for n in range(segments)]
                    tiled = Image.new("L", (sum(f.width for f in frames), frames[0].height))
                    for n, frame in enumerate(frames):
                        tiled.paste(frame.convert("L"), (n * frames[0].width, 0))
                    save_png(tiled, out_dir / f"{name}.png", width * len(frames))
                    written.append(f"{name}.png")
        for result in results:
            name = _file_name(result)
            if result.kind is ResultKind.REGION_GSPS:
                picture, log = render_gsps(paths[name], source_path, work)
                save_png(picture, out_dir / f"{name}.png", width)
                (out_dir / f"{name}-dcmp2pgm.txt").write_text(_annotation_lines(log))
                written += [f"{name}.png", f"{name}-dcmp2pgm.txt"]
            elif result.kind in (ResultKind.FINDINGS_SR, ResultKind.NOT_ANALYSED_SR):
                written += render_sr(paths[name], out_dir, name, work)
    return written


def cross_references(results: Sequence[BuiltResult]) -> str:
    """How a script goes from each object to the others: its job step, the SR it references
    (0008,114A), and for an SR the objects it lists as evidence; by file name."""
    names = {str(r.dataset.SOPInstanceUID): _file_name(r) for r in results}
    step_names: dict[str, str] = {}  # in the order the objects name them
    for result in results:
        step = str(
            result.dataset.ReferencedPerformedProcedureStepSequence[0].ReferencedSOPInstanceUID
        )
        step_names.setdefault(step, f"step {len(step_names) + 1}")
    lines = [f"{name}: {uid}" for uid, name in step_names.items()]
    lines.append("")
    for result in results:
        ds = result.dataset
        step = str(ds.ReferencedPerformedProcedureStepSequence[0].ReferencedSOPInstanceUID)
        line = f"{_file_name(result)} ({ds.Modality}): {step_names[step]}"
        if "PerformedProcedureStepID" in ds:
            line += f", job {ds.PerformedProcedureStepID}"
        for item in ds.get("ReferencedInstanceSequence", []):
            purpose = item.PurposeOfReferenceCodeSequence[0]
            target = names.get(str(item.ReferencedSOPInstanceUID), "another instance")
            line += f"; 0008,114A -> {target} ({purpose.CodeValue} {purpose.CodeMeaning})"
        evidence = [
            names.get(str(item.ReferencedSOPInstanceUID), "source image")
            for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence
        ]
        if evidence:
            line += f"; evidence: {', '.join(sorted(evidence))}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _annotation_lines(log: str) -> str:
    """The part of dcmp2pgm's ``-v`` account that describes the graphic layers and annotations."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if "Graphic Layer" in line), 0)
    return "\n".join(lines[start:]).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        help=f"a real frontal chest DICOM to render over (pictures go to {LOCAL_OUT})",
    )
    parser.add_argument("--out", type=Path, help=f"where to write (default {DEFAULT_OUT})")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="picture width")
    args = parser.parse_args(argv)
    source: pydicom.Dataset
    if args.source is not None:
        source = pydicom.dcmread(args.source)
        if not source.get("PatientName"):
            # dcmtk refuses a presentation state with an empty (type 2) Patient Name.
            source.PatientName = "Anonymous^Source"
        out_dir = args.out or LOCAL_OUT
    else:
        source = phantom_dataset()
        out_dir = args.out or DEFAULT_OUT
    for name in render(source, out_dir, args.width):
        print(out_dir / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
