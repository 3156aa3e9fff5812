"""``radlight models evaluate-grounding`` and ``evaluate-lungs``: reproduce docs/GROUNDING.md."""

import argparse
import json
import sys
from pathlib import Path

from radlight.cli_common import out
from radlight.settings import Settings

DEFAULT_SETS = ("nih_cxr14", "nih_cxr14_bbox")


def _default_assets() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "shared" / "assets"


def cmd_evaluate_grounding(args: argparse.Namespace, settings: Settings) -> int:
    """Pointing game, IoU and Dice of each grounding method on the NIH expert boxes."""
    from models.grounding.adapter import classifier_callable
    from models.grounding.evaluation import METHODS, evaluate_grounding, read_boxed_images
    from models.registry import ModelRegistry

    classify = None
    methods = tuple(m for m in METHODS if m not in ("cam-prior", "cam"))
    model_note = "no classifier (--model not given)"
    if args.model:
        name, _, version = args.model.partition(":")
        entry = ModelRegistry(settings.models_dir).get(name, version or None)
        classify = classifier_callable(entry)
        methods = METHODS
        trained = "trained" if entry.card.trained else "UNTRAINED: its CAMs mean nothing"
        model_note = f"{entry.name} {entry.version} (sha256 {entry.sha256[:12]}, {trained})"
    assets = Path(args.assets) if args.assets else _default_assets()
    report: dict[str, object] = {"model": model_note, "work_size": args.work_size, "sets": {}}
    out(f"classifier: {model_note}")
    for set_name in args.set or DEFAULT_SETS:
        folder = assets / set_name
        try:
            boxed = read_boxed_images(folder, limit=args.limit)
            results = evaluate_grounding(
                boxed, classify=classify, methods=methods, work_size=args.work_size
            )
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"radlight: {set_name}: {exc}\n")
            return 2
        images = len({b.image_index for b in boxed})
        out(f"\n{set_name}: {len(boxed)} box sets on {images} images")
        out(
            f"{'method':<10} {'wording':<10} {'n':>4} {'pointing':>9} "
            f"{'thr':>5} {'n rep':>5} {'IoU':>6} {'Dice':>6}"
        )
        rows = []
        for result in sorted(results, key=lambda r: (r.wording, METHODS.index(r.method))):
            tuned = result.tuned
            out(
                f"{result.method:<10} {result.wording:<10} {result.n_cases:>4} "
                f"{result.hit_rate:>9.3f} {tuned.tuning.threshold:>5.2f} "
                f"{tuned.report.n_cases:>5} {tuned.report.mean_iou:>6.3f} "
                f"{tuned.report.mean_dice:>6.3f}"
            )
            rows.append(
                {
                    "method": result.method,
                    "wording": result.wording,
                    "n_cases": result.n_cases,
                    "pointing_hit_rate": result.hit_rate,
                    "threshold": tuned.tuning.threshold,
                    "n_tune": len(tuned.tune_cases),
                    "n_report": tuned.report.n_cases,
                    "report_mean_iou": tuned.report.mean_iou,
                    "report_mean_dice": tuned.report.mean_dice,
                }
            )
        report["sets"][set_name] = {"box_sets": len(boxed), "images": images, "results": rows}  # type: ignore[index]
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def cmd_evaluate_lungs(args: argparse.Namespace, settings: Settings) -> int:
    """Dice of the classical lung fields against the Montgomery masks."""
    from models.grounding.evaluation import evaluate_lung_fields

    folder = Path(args.masks) if args.masks else _default_assets() / "montgomery_lungs"
    try:
        figures = evaluate_lung_fields(folder, limit=args.limit)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"radlight: {exc}\n")
        return 2
    out(
        f"{len(figures.images)} images of {folder}: Dice right {figures.mean_right:.3f}, "
        f"left {figures.mean_left:.3f}, mean {figures.mean:.3f}, median {figures.median:.3f}, "
        f"lowest {min(figures.right + figures.left):.3f}; template stand-ins on "
        f"{figures.fallbacks} images"
    )
    return 0


def add_grounding_commands(models: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register the grounding evaluation commands under ``radlight models``."""
    grounding = models.add_parser(
        "evaluate-grounding",
        help="pointing game, IoU and Dice of phrase grounding on the NIH expert boxes",
    )
    grounding.set_defaults(func=cmd_evaluate_grounding)
    grounding.add_argument("--model", help="NAME[:VERSION] whose CAMs to use (default: none)")
    grounding.add_argument("--assets", help="shared assets folder (default ../shared/assets)")
    grounding.add_argument(
        "--set", action="append", help=f"box set folder(s) (default {', '.join(DEFAULT_SETS)})"
    )
    grounding.add_argument("--limit", type=int, help="first N box sets of each set only")
    grounding.add_argument("--work-size", type=int, default=256, help="grid (default 256)")
    grounding.add_argument("--json", help="also write the figures to this JSON file")
    lungs = models.add_parser(
        "evaluate-lungs", help="Dice of the lung fields against the Montgomery masks"
    )
    lungs.set_defaults(func=cmd_evaluate_lungs)
    lungs.add_argument("--masks", help="montgomery_lungs folder (default in ../shared/assets)")
    lungs.add_argument("--limit", type=int, help="first N images only")
