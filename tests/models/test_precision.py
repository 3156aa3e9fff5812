"""fp16 copies of a model (models/precision.py), on real parts: the tiny ONNX classifier installed
in a real registry, checked on the two real DICOM chest X-rays, run by onnxruntime.

A copy is kept only if it agrees with the card's file; a worker runs it only while its record and
its sha256 hold, and says why it runs fp32 otherwise; results made by it say so.
"""

import errno
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pydicom
import pytest

from models.card import OutputNames
from models.export import BuiltModel
from models.precision import (
    FP16_FILE,
    FP16_RECORD,
    make_fp16_copy,
    prepared_batch,
    select_precision,
    with_precision,
)
from models.preprocess import prepare_image
from models.registry import ModelEntry, ModelRegistry
from models.runtime import HeatmapModel, load_model
from radlight.errors import ModelError
from tests.peers import radlight
from tests.pneumonia_build import build_tiny_heatmap_model
from tests.test_cli import _env
from workers.analysis import algorithm_of
from workers.imaging import load_frontal_chest

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture
def installed(tmp_path: Path, tiny_model: BuiltModel) -> ModelEntry:
    return ModelRegistry(tmp_path / "models").install(tiny_model.onnx_path, tiny_model.card)


def check_batch(entry: ModelEntry, files: list[Path]) -> np.ndarray:
    return prepared_batch(
        prepare_image(load_frontal_chest(pydicom.dcmread(f)), entry.card.preprocessing).tensor
        for f in files
    )


def test_a_copy_that_agrees_is_kept_and_runs_in_fp16(
    installed: ModelEntry, real_dicom_files: list[Path]
) -> None:
    batch = check_batch(installed, real_dicom_files)
    check = make_fp16_copy(installed, batch)

    assert check.passed
    assert check.images == 2
    assert 0 < check.max_probability_difference <= check.tolerance  # other numbers, close ones
    assert 0 < check.max_heatmap_difference <= check.heatmap_tolerance
    assert check.decisions_changed == 0
    record = json.loads((installed.directory / FP16_RECORD).read_text())
    assert record["source_sha256"] == installed.sha256
    assert sorted(p.name for p in installed.directory.iterdir()) == sorted(
        [installed.card.onnx_file, "card.yaml", FP16_FILE, FP16_RECORD]
    )

    graph = onnx.load(installed.directory / FP16_FILE).graph
    weights = {init.name: init.data_type for init in graph.initializer}
    names = installed.card.outputs
    assert isinstance(names, OutputNames)
    assert weights.pop(names.cam_weight) == FLOAT  # the head stays float32
    assert weights.pop(names.cam_bias) == FLOAT
    assert set(weights.values()) == {FLOAT16}  # the whole backbone is float16
    assert [i.type.tensor_type.elem_type for i in graph.input] == [FLOAT]

    fp16 = with_precision(installed, "fp16")
    assert (fp16.precision, fp16.sha256, fp16.onnx_path.name) == ("fp16", check.sha256, FP16_FILE)
    ours, theirs = load_model(installed).infer(batch), load_model(fp16).infer(batch)
    np.testing.assert_allclose(theirs.probabilities, ours.probabilities, atol=check.tolerance)
    assert not np.array_equal(theirs.probabilities, ours.probabilities)
    algorithm = algorithm_of(fp16)
    assert (algorithm.version, algorithm.sha256) == (f"{installed.version}+fp16", check.sha256)
    assert algorithm_of(installed).version == installed.version


def test_a_copy_outside_the_tolerance_is_refused_and_nothing_is_kept(
    installed: ModelEntry, real_dicom_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(p.name for p in installed.directory.iterdir())
    with pytest.raises(ModelError, match=r"differs too much: 2 images: .*tolerance 0\b"):
        make_fp16_copy(installed, check_batch(installed, real_dicom_files), tolerance=0.0)
    assert sorted(p.name for p in installed.directory.iterdir()) == before
    with pytest.raises(ModelError, match="no fp16 copy"):
        with_precision(installed, "fp16")
    with pytest.raises(ModelError, match="no check images"):
        make_fp16_copy(installed, prepared_batch([]))

    def read_only(**_: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    # A read-only models volume (root, as these tests run, writes past a folder's mode).
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(ModelError, match=r"cannot write the fp16 copy in .*Read-only file system"):
        make_fp16_copy(installed, check_batch(installed, real_dicom_files))


def test_a_worker_runs_fp32_when_the_copy_cannot_be_trusted_and_says_why(
    installed: ModelEntry, real_dicom_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="models.precision")
    assert select_precision(installed, "fp16").precision == "fp32"
    assert "has no fp16 copy" in caplog.text

    make_fp16_copy(installed, check_batch(installed, real_dicom_files))
    assert select_precision(installed, "fp16").precision == "fp16"
    assert select_precision(installed, "fp32").precision == "fp32"

    copy = installed.directory / FP16_FILE
    copy.write_bytes(copy.read_bytes() + b"\0")  # changed under the worker
    chosen = select_precision(installed, "fp16")
    assert (chosen.precision, chosen.sha256) == ("fp32", installed.sha256)
    assert f"{copy} has sha256" in caplog.text

    record = installed.directory / FP16_RECORD
    values = json.loads(record.read_text())
    record.write_text(json.dumps({**values, "source_sha256": "0" * 64}))
    assert select_precision(installed, "fp16").precision == "fp32"
    assert "was made from another file" in caplog.text
    record.write_text("{not json")
    assert select_precision(installed, "fp16").precision == "fp32"
    assert "is not an fp16 record" in caplog.text


def test_the_cli_makes_the_copy_from_dicom_images_and_lists_it(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    env = _env(tmp_path)
    radlight(env, "models", "build", "tiny")
    ((name, version, *_),) = [line.split() for line in radlight(env, "models", "list").splitlines()]
    folder = tmp_path / "check"
    folder.mkdir()
    for source in real_dicom_files:
        (folder / source.name).write_bytes(source.read_bytes())
    (folder / "notes.txt").write_text("not an image")

    out = radlight(env, "models", "fp16", name, "--images", str(folder))

    assert f"skipped {folder / 'notes.txt'}" in out
    assert f"fp16 copy of {name} {version} kept" in out
    assert "2 images" in out
    (listed,) = radlight(env, "models", "list").splitlines()
    assert listed.split()[-1].startswith("fp16:")


def test_bad_input_to_the_fp16_command_gets_a_clear_error(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    env = _env(tmp_path)
    radlight(env, "models", "build", "tiny")
    ((name, *_),) = [line.split() for line in radlight(env, "models", "list").splitlines()]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "radlight", "models", "fp16", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    for tolerance in ("2", "-0.1", "nan", "lots"):
        refused = run(name, "--images", str(real_dicom_files[0]), "--tolerance", tolerance)
        assert refused.returncode == 2, tolerance
        assert "--tolerance" in refused.stderr
    lateral = tmp_path / "lateral.dcm"
    ds = pydicom.dcmread(real_dicom_files[0])
    ds.ViewPosition = "LL"
    ds.save_as(lateral)
    none_usable = run(name, "--images", str(lateral), str(tmp_path / "missing.dcm"))
    assert none_usable.returncode != 0
    assert "none of the --images is a frontal chest radiograph" in none_usable.stderr
    assert "lateral" in none_usable.stdout  # each skipped file is named, with why
    unknown = run("no-such-model", "--images", str(real_dicom_files[0]))
    assert unknown.returncode != 0
    assert "no model named 'no-such-model'" in unknown.stderr
    assert "Traceback" not in none_usable.stderr + unknown.stderr


def test_a_model_without_a_features_tensor_gets_no_fp16_copy(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    built = build_tiny_heatmap_model(tmp_path / "built")
    entry = ModelRegistry(tmp_path / "models").install(built.onnx_path, built.card)
    model = load_model(entry)
    assert isinstance(model, HeatmapModel)
    with pytest.raises(ModelError, match="probabilities-heatmap/1; fp16 copies are made for"):
        make_fp16_copy(entry, np.zeros((1, *model.input_shape), dtype=np.float32))
    assert not (entry.directory / FP16_FILE).exists()
