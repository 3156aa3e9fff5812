"""``radlight models …``: build, import, list, verify and evaluate models in the registry."""

import argparse
import sys

from radlight.cli_common import db_transaction, out
from radlight.cli_grounding import add_grounding_commands
from radlight.errors import ConfigurationError
from radlight.settings import Settings

BUNDLED_MODELS = ("densenet121-untrained", "tiny")
# Built on the user's machine from PyPI (no licence lets RadLight ship it); see models.pneumonia_demo.
PNEUMONIA_DEMO = "pneumonia-demo"
PNEUMONIA_DEMO_ROUTE = "pediatric-pneumonia-demo"


def _install_built(settings: Settings, kind: str) -> str:
    """Build a bundled model (``tiny`` or ``densenet121-untrained``) and install it."""
    import tempfile
    from pathlib import Path

    from models.export import build_tiny_classifier, build_untrained_chexnet
    from models.registry import ModelRegistry

    registry = ModelRegistry(settings.models_dir)
    with tempfile.TemporaryDirectory() as tmp:
        builder = build_tiny_classifier if kind == "tiny" else build_untrained_chexnet
        built = builder(Path(tmp))
        entry = registry.install(built.onnx_path, built.card)
    return f"{entry.name} {entry.version}"


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from models.precision import read_fp16_check
    from models.registry import ModelRegistry
    from radlight.errors import ModelError

    for entry in ModelRegistry(settings.models_dir).list():
        trained = "trained" if entry.card.trained else "UNTRAINED"
        try:
            check = read_fp16_check(entry)
        except ModelError:
            check = None
        fp16 = f" fp16:{check.sha256[:12]}" if check is not None and check.passed else ""
        out(f"{entry.name} {entry.version} {entry.sha256[:12]} {trained}{fp16}")
    return 0


def cmd_models_fp16(args: argparse.Namespace, settings: Settings) -> int:
    """Make an installed model's fp16 copy, check it on the given DICOM images, keep it if it
    agrees (models.precision); workers run it with RADLIGHT_INFERENCE_PRECISION=fp16."""
    from pathlib import Path

    import pydicom
    from pydicom.errors import InvalidDicomError

    from models.precision import make_fp16_copy, prepared_batch
    from models.preprocess import prepare_image
    from models.registry import ModelRegistry
    from radlight.errors import NotAnalysableError
    from workers.imaging import load_frontal_chest

    entry = ModelRegistry(settings.models_dir).get(args.name, args.version)
    paths: list[Path] = []
    for given in map(Path, args.images):
        paths.extend(
            sorted(p for p in given.rglob("*") if p.is_file()) if given.is_dir() else [given]
        )
    tensors = []
    for path in paths:
        try:
            display = load_frontal_chest(pydicom.dcmread(path))
        except (InvalidDicomError, NotAnalysableError, EOFError, OSError, ValueError) as exc:
            out(f"skipped {path}: {exc}")
            continue
        tensors.append(prepare_image(display, entry.card.preprocessing).tensor)
    if not tensors:
        raise ConfigurationError("none of the --images is a frontal chest radiograph to check on")
    check = make_fp16_copy(
        entry,
        prepared_batch(tensors),
        tolerance=args.tolerance,
        heatmap_tolerance=args.heatmap_tolerance,
        default_threshold=settings.default_threshold,
    )
    out(
        f"fp16 copy of {entry.name} {entry.version} kept (sha256 {check.sha256[:12]}): {check.summary()}"
    )
    return 0


def cmd_models_build(args: argparse.Namespace, settings: Settings) -> int:
    if args.kind == PNEUMONIA_DEMO:
        return _build_pneumonia_demo(args, settings)
    out(f"installed {_install_built(settings, args.kind)}")
    return 0


def _build_pneumonia_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Build (or reuse) the pediatric demo model, install it, and add its pediatric route."""
    from pathlib import Path

    from sqlalchemy.exc import DBAPIError

    from db.config import upsert_route
    from db.models import Route
    from models import pneumonia_demo as demo
    from models.registry import ModelRegistry

    registry = ModelRegistry(settings.models_dir)
    if demo.VERSION in registry.versions(demo.NAME):
        entry = registry.get(demo.NAME, demo.VERSION)
        out(f"{entry.name} {entry.version} is already installed (sha256 {entry.sha256})")
    else:
        build_dir = Path(args.build_dir) if args.build_dir else None
        built = demo.build_pneumonia_demo(
            build_dir or demo.default_build_dir(settings.resolved_data_dir),
            accept_different_hash=args.accept_different_hash,
            report=out,
        )
        entry = registry.install(built.onnx_path, built.card)
        out(f"installed {entry.name} {entry.version} (sha256 {entry.sha256})")
    out("DEMO ONLY: pediatric (ages 1-5) pneumonia model, not validated on adults, no licence")
    try:
        with db_transaction(settings) as session:
            exists = session.query(Route).filter(Route.name == PNEUMONIA_DEMO_ROUTE).count()
            if not exists or args.destination:
                upsert_route(
                    session=session,
                    name=PNEUMONIA_DEMO_ROUTE,
                    model_name=entry.name,
                    model_version=entry.version,
                    modalities=["CR", "DX"],
                    destination_names=args.destination or (),
                )
                out(f"route {PNEUMONIA_DEMO_ROUTE} (CR, DX) -> {entry.name} {entry.version}")
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    except DBAPIError as exc:
        raise ConfigurationError(
            f"the model is installed, but its route could not be added ({exc.orig}); "
            "run `radlight db upgrade` and build again"
        ) from exc
    return 0


def cmd_models_evaluate_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Reproduce the demo card's figures on the 16 pediatric JPEGs bundled in the wheel."""
    from pathlib import Path

    from models import pneumonia_demo as demo
    from models.registry import ModelRegistry

    entry = ModelRegistry(settings.models_dir).get(demo.NAME, demo.VERSION)
    images = Path(args.images) if args.images else None
    if images is None:
        build_dir = Path(args.build_dir or demo.default_build_dir(settings.resolved_data_dir))
        demo.ensure_package(build_dir, out)
        images = demo.images_dir(build_dir)
    figures = demo.evaluate_bundled(entry.onnx_path, entry.sha256, images)
    out(f"{entry.name} {entry.version} (sha256 {entry.sha256}) on {images}")
    out(f"{'file':<32} {'truth':<10} {'p(PNEUMONIA)':>12} {'README':>8}  predicted")
    for row in figures.rows:
        golden = f"{row.golden:.4f}" if row.golden is not None else "-"
        out(f"{row.file:<32} {row.truth:<10} {row.probability:>12.4f} {golden:>8}  {row.predicted}")
    out(
        f"accuracy {figures.accuracy:.4f} ({figures.correct}/{len(figures.rows)}), "
        f"AUROC {figures.auroc:.3f}, largest difference from README "
        f"{figures.max_golden_difference:.2g}"
    )
    return 0 if figures.max_golden_difference <= demo.GOLDEN_TOLERANCE else 1


def _model_ref(text: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:VERSION``."""
    name, _, version = text.partition(":")
    return name, version or None


def cmd_models_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Compare a model's outputs with reference predictions (exit 1 beyond the tolerance)."""
    from pathlib import Path

    from models.registry import ModelRegistry
    from models.verify import (
        list_images,
        predict_files,
        read_predictions,
        verify_model,
        write_predictions,
    )

    entry = ModelRegistry(settings.models_dir).get(*_model_ref(args.model))
    try:
        if args.write_reference:
            table = predict_files(entry, list_images(args.images), batch_size=args.batch_size)
            write_predictions(Path(args.write_reference), table)
            out(
                f"wrote {len(table.images)} images x {len(table.labels)} labels of "
                f"{entry.name} {entry.version} to {args.write_reference}"
            )
            return 0
        report = verify_model(
            entry,
            args.images,
            read_predictions(args.reference),
            tolerance=args.tolerance,
            batch_size=args.batch_size,
        )
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"radlight: {exc}\n")
        return 2
    out(f"{entry.name} {entry.version} on {report.n_images} images of {args.images}")
    for item in report.per_label:
        out(
            f"  {item.label:<20} max |diff| {item.max_abs_diff:.3g}  "
            f"({item.image}: {item.predicted:.6f} vs reference {item.reference:.6f})"
        )
    if report.unchecked_labels:
        out(f"  not in the reference (unchecked): {', '.join(report.unchecked_labels)}")
    verdict = "PASS" if report.passed else "FAIL"
    out(f"{verdict}: max |diff| {report.max_abs_diff:.3g}, tolerance {report.tolerance:g}")
    for item in report.failures():
        out(f"  beyond tolerance: {item.image} {item.label} (|diff| {item.max_abs_diff:.3g})")
    return 0 if report.passed else 1


def cmd_models_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    """Per-label AUROC with a bootstrap CI, sensitivity/specificity and ECE of a predictions CSV."""
    from models.metrics import evaluate, read_nih_labels, thresholds_for
    from models.verify import read_predictions

    specs = None
    if args.model:
        from models.registry import ModelRegistry

        specs = ModelRegistry(settings.models_dir).get(*_model_ref(args.model)).card.labels
    try:
        table = read_predictions(args.predictions)
        truth = read_nih_labels(args.labels, table.images, table.labels)
        thresholds = thresholds_for(table.labels, specs, default=args.threshold)
        reports = evaluate(
            truth,
            table.scores,
            table.labels,
            thresholds=thresholds,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            n_bins=args.bins,
        )
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"radlight: {exc}\n")
        return 2
    out(
        f"{len(table.images)} images; AUROC 95% CI from {args.bootstrap} bootstrap resamples "
        f"(seed {args.seed}); positive when score >= threshold; ECE over {args.bins} bins"
    )
    out(
        f"{'label':<20} {'pos':>6} {'AUROC':>7} {'95% CI':>17} {'thr':>5} {'sens':>6} "
        f"{'spec':>6} {'ECE':>6}"
    )
    for item in reports:
        auc, point = item.auroc, item.operating_point
        out(
            f"{auc.label:<20} {auc.n_positive:>6} {auc.auc:>7.4f} "
            f"[{auc.ci_low:.4f}, {auc.ci_high:.4f}] {point.threshold:>5.2f} "
            f"{point.sensitivity:>6.3f} {point.specificity:>6.3f} {item.ece:>6.4f}"
        )
    aucs = [item.auroc.auc for item in reports]
    out(f"{'mean AUROC':<20} {'':>6} {sum(aucs) / len(aucs):>7.4f}")
    return 0


def _add_evaluation_commands(models: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from pathlib import Path

    verify = models.add_parser(
        "verify",
        help="check that a model reproduces reference predictions",
        description=(
            "Run an installed model over the PNG images of a folder and compare its scores with a "
            "reference predictions CSV (image file name, then one column per label, 'Label' or "
            "'prob_Label'; labels are matched by name). Prints the largest absolute difference "
            "per label and overall. Exit 0: within the tolerance; 1: beyond it (the image and "
            "label are named); 2: unreadable input or reference images missing. With the real "
            "jrzech/reproduce-chexnet checkpoint imported, the 34 images in "
            "shared/assets/nih_cxr14/images must reproduce "
            "shared/assets/reference/chexnet_jrzech_preds_subset.csv within 1e-3 (not run here: "
            "those weights are not available on this machine). --write-reference writes such a "
            "file from the model instead."
        ),
    )
    verify.set_defaults(func=cmd_models_verify)
    verify.add_argument("--model", required=True, help="NAME or NAME:VERSION (default: latest)")
    verify.add_argument("--images", required=True, type=Path, help="folder of PNG images")
    target = verify.add_mutually_exclusive_group(required=True)
    target.add_argument("--reference", type=Path, help="reference predictions CSV (.csv[.gz])")
    target.add_argument("--write-reference", type=Path, help="write the model's predictions")
    verify.add_argument("--tolerance", type=float, default=1e-3, help="default 1e-3")
    verify.add_argument("--batch-size", type=int, default=8)

    evaluate = models.add_parser(
        "evaluate",
        help="AUROC with CI, sensitivity/specificity and ECE of predictions",
        description=(
            "Score a predictions CSV (the format of 'models verify') against NIH labels "
            "(Data_Entry_2017*.csv[.gz]): per-label AUROC with a percentile bootstrap 95%% CI "
            "(images resampled), sensitivity and specificity at a threshold (--threshold, or the "
            "card's per-finding thresholds with --model), and expected calibration error."
        ),
    )
    evaluate.set_defaults(func=cmd_models_evaluate)
    evaluate.add_argument("--predictions", required=True, type=Path)
    evaluate.add_argument("--labels", required=True, type=Path, help="NIH Data_Entry CSV")
    evaluate.add_argument("--bootstrap", type=int, default=1000, help="resamples (default 1000)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--threshold", type=float, default=0.5, help="default 0.5")
    evaluate.add_argument("--model", help="NAME[:VERSION] whose card's thresholds to use")
    evaluate.add_argument("--bins", type=int, default=10, help="ECE bins (default 10)")


def cmd_models_import(args: argparse.Namespace, settings: Settings) -> int:
    """Convert a public checkpoint to ONNX + card (no code from the file runs) and install it."""
    import tempfile
    from pathlib import Path

    from models.importers import import_checkpoint
    from models.registry import ModelRegistry

    with tempfile.TemporaryDirectory(prefix="radlight-import-") as tmp:
        built = import_checkpoint(
            args.format, Path(args.path), Path(tmp), name=args.name, version=args.version
        )
        entry = ModelRegistry(settings.models_dir).install(built.onnx_path, built.card)
    out(f"installed {entry.name} {entry.version} (sha256 {entry.sha256})")
    out(f"  {len(entry.card.labels)} labels: {', '.join(entry.card.label_names)}")
    out(f"  from {entry.card.provenance.source} (sha256 {entry.card.provenance.source_sha256})")
    out("  not validated by RadLight; not for primary diagnosis")
    return 0


def _add_import_command(models: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    # models.importers.formats.FORMATS, spelled out so that building the parser imports nothing.
    formats = ("arnoweng-chexnet", "jrzech-chexnet", "xrv-densenet121")
    parser = models.add_parser(
        "import",
        help="import a public CheXNet-style checkpoint as an ONNX model",
        description=(
            "Formats: arnoweng-chexnet (arnoweng/CheXNet model.pth.tar), jrzech-chexnet "
            "(jrzech/reproduce-chexnet results/checkpoint), xrv-densenet121 (torchxrayvision "
            "DenseNet-121 .pt). The file is unpickled with an allow-list of known classes: "
            "anything else is refused and nothing from it runs. Needs torch (export extra)."
        ),
    )
    parser.set_defaults(func=cmd_models_import)
    parser.add_argument("format", choices=formats)
    parser.add_argument("path", help="checkpoint file")
    parser.add_argument("--name", help="model name (default: one per format)")
    parser.add_argument("--version", help="model version (default: sha256-<checkpoint hash>)")


def _fraction(text: str) -> float:
    """A tolerance: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def add_model_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``radlight models …`` on the top-level subparsers."""
    models = sub.add_parser("models", help="model registry").add_subparsers(
        dest="models_cmd", required=True
    )
    models.add_parser("list", help="installed models").set_defaults(func=cmd_models_list)
    build = models.add_parser("build", help="build and install a bundled model")
    build.set_defaults(func=cmd_models_build)
    build.add_argument("kind", choices=(*BUNDLED_MODELS, PNEUMONIA_DEMO))
    build.add_argument(
        "--accept-different-hash",
        action="store_true",
        help="pneumonia-demo: accept an ONNX sha256 other than the reference if the golden "
        "figures are reproduced (other torch/onnx versions)",
    )
    build.add_argument(
        "--build-dir", help="pneumonia-demo: download/convert folder (default DATA/build/...)"
    )
    build.add_argument(
        "--destination", action="append", help="pneumonia-demo: destination of its route"
    )
    evaluate_demo = models.add_parser(
        "evaluate-demo", help="reproduce the pneumonia demo card's figures (16 pediatric JPEGs)"
    )
    evaluate_demo.set_defaults(func=cmd_models_evaluate_demo)
    evaluate_demo.add_argument("--images", help="folder of the val JPEGs (default: the wheel's)")
    evaluate_demo.add_argument("--build-dir", help="where the wheel is (default DATA/build/...)")
    fp16 = models.add_parser(
        "fp16",
        help="make and check an installed model's fp16 copy (for GPU workers)",
        description="The backbone is converted to float16, the head kept float32; the copy is "
        "kept only if, on the check images, every probability is within --tolerance, every "
        "heatmap within --heatmap-tolerance of its range and no finding's decision changes. "
        "Workers run it with RADLIGHT_INFERENCE_PRECISION=fp16.",
    )
    fp16.set_defaults(func=cmd_models_fp16)
    fp16.add_argument("name")
    fp16.add_argument("--version", help="default: the latest installed")
    fp16.add_argument(
        "--images", nargs="+", required=True, help="DICOM files or folders of frontal CXRs"
    )
    fp16.add_argument("--tolerance", type=_fraction, default=0.01)
    fp16.add_argument("--heatmap-tolerance", type=_fraction, default=0.02)
    _add_evaluation_commands(models)
    _add_import_command(models)
    add_grounding_commands(models)
