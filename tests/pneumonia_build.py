"""The pneumonia demo model for tests: built once per machine, and its JPEGs as DICOM.

The build downloads ``pneumonia-model-package`` from PyPI and converts it (about 20-60 s), so it is
cached outside the test's temporary folders, in ``$RADLIGHT_TEST_CACHE`` (default
``~/.cache/radlight-test``) under ``pneumonia-demo/``; later runs on the same machine only check the
cached files' sha256 values. A file lock keeps parallel test processes from building it twice.
"""

import fcntl
import os
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from models.export import BuiltModel
from models.pneumonia_demo import build_pneumonia_demo, images_dir, load_gray_jpeg

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")


def cache_root() -> Path:
    default = Path.home() / ".cache" / "radlight-test"
    return Path(os.environ.get("RADLIGHT_TEST_CACHE", default))


def demo_build_dir() -> Path:
    return cache_root() / "pneumonia-demo"


def build_demo_once() -> tuple[BuiltModel, Path]:
    """The built demo model and the folder of its 16 bundled val JPEGs."""
    build_dir = demo_build_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    with (build_dir.parent / "pneumonia-demo.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            built = build_pneumonia_demo(build_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return built, images_dir(build_dir)


def jpeg_to_dicom(
    jpeg: Path,
    *,
    study_instance_uid: str,
    series_instance_uid: str,
    instance_number: int,
    patient_age: str = "003Y",
) -> Dataset:
    """A DX (for presentation) MONOCHROME2 8-bit image holding the JPEG's decoded gray values.

    No VOI LUT and no rescale, so the node's display image is exactly the JPEG's pixels, and the
    demo's preprocessing sees what it sees for the JPEG (PIL ``convert("RGB")`` of a gray image
    copies the gray values into R, G and B).
    """
    pixels = load_gray_jpeg(jpeg)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    sop_instance_uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.Modality = "DX"
    ds.PatientName = "PEDIATRIC^DEMO"
    ds.PatientID = "PEDS-DEMO"
    ds.PatientAge = patient_age
    ds.PatientSex = ""
    ds.PatientBirthDate = ""
    ds.StudyDate = date(2024, 1, 2).strftime("%Y%m%d")
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "AP"
    ds.ImageComments = jpeg.name
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_pediatric_study(jpegs: list[Path], folder: Path, patient_age: str = "003Y") -> list[Path]:
    """One study, one series: each JPEG as a DICOM file in ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = str(generate_uid()), str(generate_uid())
    paths = []
    for number, jpeg in enumerate(jpegs, start=1):
        ds = jpeg_to_dicom(
            jpeg,
            study_instance_uid=study,
            series_instance_uid=series,
            instance_number=number,
            patient_age=patient_age,
        )
        path = folder / f"{jpeg.stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    assert pydicom.dcmread(paths[0]).pixel_array.dtype == np.uint8
    return paths


def build_tiny_heatmap_model(out_dir: Path, *, name: str = "tiny-heatmap-test") -> BuiltModel:
    """A few-node probabilities-heatmap/1 model with the demo's tensor names, input and card.

    probs = softmax(mean_hw(input) @ W) over two classes, gradcam = the channel mean pooled to
    5x5: cheap, deterministic and image-dependent, for runtime and pipeline tests.
    """
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from models.card import ModelCard
    from models.checksum import sha256_bytes
    from models.pneumonia_demo import demo_card

    weight = np.array([[1.0, -1.0], [0.5, 0.5], [-2.0, 2.0]], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input", "hw_axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("ReduceMean", ["input", "c_axis"], ["gray"], keepdims=0),
        helper.make_node("Reshape", ["gray", "blocks"], ["blocked"]),
        helper.make_node("ReduceMean", ["blocked", "block_axes"], ["gradcam"], keepdims=0),
    ]
    initializers = [
        numpy_helper.from_array(weight, "W"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "hw_axes"),
        numpy_helper.from_array(np.array([3], dtype=np.int64), "c_axis"),
        numpy_helper.from_array(np.array([-1, 5, 30, 5, 30], dtype=np.int64), "blocks"),
        numpy_helper.from_array(np.array([2, 4], dtype=np.int64), "block_axes"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-heatmap",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 150, 150, 3])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("gradcam", TensorProto.FLOAT, ["batch", 5, 5]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    onnx_path.write_bytes(data)
    fields = demo_card(sha256_bytes(data)).model_dump(mode="json")
    card = ModelCard.model_validate_json(
        json.dumps({**fields, "name": name, "version": "0.0.1", "trained": False})
    )
    card_path = out_dir / "card.yaml"
    card.save(card_path)
    return BuiltModel(onnx_path=onnx_path, card_path=card_path, card=card)
