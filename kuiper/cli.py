"""The `kuiper` command line: one sub-command per thing the engine can do for a person."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import kuiper
from kuiper import bench as benchmarks
from kuiper.errors import KuiperError
from kuiper.registry import load
from kuiper.vision.classify import classify, load_image, read_labels, top_k
from kuiper.vision.detect import class_name, detect, draw_detections

LABELS = Path(__file__).resolve().parents[1] / "data" / "imagenet_classes.txt"


def find(paths: list[str]) -> None:
    """KuiperError naming the first path that is not a file."""
    for path in paths:
        if not Path(path).is_file():
            raise KuiperError(f"{path}: no such file")


def run(args: argparse.Namespace) -> list[dict]:
    """Classify images with an ImageNet model: the top-k classes and their probabilities."""
    find([args.model, *args.images])
    labels = read_labels(args.labels)
    probs = classify(load(args.model), args.images, args.batch)
    if probs.shape[1] != len(labels):
        raise KuiperError(f"{args.model} gives {probs.shape[1]} scores, but {args.labels} names "
                          f"{len(labels)} classes")
    results = []
    for path, p in zip(args.images, probs):
        index, value = top_k(p, args.top)
        top = [{"index": int(i), "class": labels[i], "probability": round(float(v), 6)} for i, v in zip(index, value)]
        results.append({"image": str(path), "top": top})
        if not args.json:
            print(f"{path}: " + ", ".join(f"{t['class']} ({t['probability']:.3f})" for t in top))
    return results


def detect_objects(args: argparse.Namespace) -> list[dict]:
    """Detect objects with a YOLO model; optionally write annotated copies of the images."""
    find([args.model, *args.images])
    labels = read_labels(args.labels) if args.labels else []
    results = []
    for path, found in zip(args.images, detect(load(args.model), args.images, args.conf, args.iou, args.batch)):
        boxes = [{"box": [round(float(v), 1) for v in row[:4]], "score": round(float(row[4]), 4),
                  "class": int(row[5]), "label": class_name(labels, int(row[5]))} for row in found]
        result = {"image": str(path), "detections": boxes}
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            result["annotated"] = str(args.out / Path(path).name)
            draw_detections(load_image(path), found, labels).save(result["annotated"])
        results.append(result)
        if not args.json:
            listed = ", ".join(f"{b['label']} {b['score']:.2f} at {b['box']}" for b in boxes) or "nothing"
            print(f"{path}: {listed}")
    return results


def bench(args: argparse.Namespace) -> list[dict]:
    """Time kuiper against PyTorch: whole models, or every conv, pool and activation of the zoo (`ops`)."""
    if args.targets == ["ops"]:
        rows = benchmarks.bench_ops(args.models, args.batch[-1])
        if not args.json:
            print(benchmarks.format_rows(rows))
        return [dataclasses.asdict(row) | {"ratio": row.ratio} for row in rows]
    find(args.targets)
    model_rows = benchmarks.bench_models(args.targets, args.batch)
    if not args.json:
        print(benchmarks.format_model_rows(model_rows))
    return [row.as_json() for row in model_rows]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kuiper", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kuiper {kuiper.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("run", help="classify images with an ImageNet model")
    classify.add_argument("model", help="the model's .pnnx.param (its .pnnx.bin beside it)")
    classify.add_argument("images", nargs="+", help="image files")
    classify.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")
    classify.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    classify.add_argument("--labels", type=Path, default=LABELS, help="class names, one per line")
    classify.add_argument("--json", action="store_true", help="print machine-readable JSON")
    classify.set_defaults(func=run)
    find_boxes = commands.add_parser("detect", help="detect objects with a YOLO model")
    find_boxes.add_argument("model", help="the model's .pnnx.param (its .pnnx.bin beside it)")
    find_boxes.add_argument("images", nargs="+", help="image files")
    find_boxes.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    find_boxes.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    find_boxes.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    find_boxes.add_argument("--labels", type=Path, help="class names, one per line (default: numbers)")
    find_boxes.add_argument("--out", type=Path, help="write annotated copies of the images here")
    find_boxes.add_argument("--json", action="store_true", help="print machine-readable JSON")
    find_boxes.set_defaults(func=detect_objects)
    run_bench = commands.add_parser("bench", help="time kuiper against PyTorch in one process")
    run_bench.add_argument("targets", nargs="+", help="model .pnnx.param files, or `ops` for the operator table")
    run_bench.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    run_bench.add_argument("--models", type=Path, default=Path("data/models"), help="the zoo's folder")
    run_bench.add_argument("--json", action="store_true", help="print machine-readable JSON")
    run_bench.set_defaults(func=bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input prints one line and exits 1, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except KuiperError as err:
        print(f"kuiper: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    return 0
