"""The `kuiper` command line: one sub-command per thing the engine can do for a person."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

import kuiper
from kuiper import bench as benchmarks
from kuiper.errors import KuiperError, ShapeError
from kuiper.registry import load
from kuiper.vision.classify import classify, load_image, read_labels, top_k
from kuiper.vision.detect import class_name, detect, draw_detections
from kuiper.vision.segment import class_fractions, colour_overlay, score_classes, segment

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


def segment_names(labels: list[str], num_classes: int, source: Path | None) -> list[str]:
    """One name per class: the labels as given when they name all `num_classes` classes, with
    "background" put first when they name all but class 0; numbers without labels."""
    if not labels:
        return [str(i) for i in range(num_classes)]
    if len(labels) == num_classes - 1:
        return ["background", *labels]
    if len(labels) != num_classes:
        raise KuiperError(f"{source} names {len(labels)} classes, but the model scores {num_classes} "
                          f"(expected {num_classes} names, or {num_classes - 1} without the background)")
    return labels


def output_paths(images: list[str], out: Path, with_mask: bool) -> list[tuple[Path, Path | None]]:
    """The overlay (and mask) file for each image in `out`; KuiperError if two images would share
    a file or a file to write is one of the inputs (compared by file identity, not by name)."""
    if out.exists() and not out.is_dir():
        raise KuiperError(f"--out {out}: exists and is not a folder")
    inputs = {(s.st_dev, s.st_ino) for s in map(os.stat, images)}
    pairs, seen = [], set()
    for image in images:
        stem = Path(image).stem
        pair = (out / f"{stem}.png", out / f"{stem}_mask.png" if with_mask else None)
        for path in filter(None, pair):
            if path in seen:
                raise KuiperError(f"{image}: its output {path} would overwrite another image's output")
            if path.exists() and (path.stat().st_dev, path.stat().st_ino) in inputs:
                raise KuiperError(f"{image}: its output {path} is one of the input files")
            seen.add(path)
        pairs.append(pair)
    return pairs


def save_png(image, path: Path) -> None:
    """Write a PIL image as PNG through a temporary file in the same folder, then rename it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            image.save(file, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def segment_images(args: argparse.Namespace) -> list[dict]:
    """Segment images: per-class pixel fractions; colour overlays (and raw masks) in --out."""
    find([args.model, *args.images])
    if not 0 <= args.alpha <= 1:
        raise KuiperError(f"--alpha {args.alpha}: expected a number from 0 to 1")
    if args.batch < 1:
        raise KuiperError(f"--batch {args.batch}: expected at least 1")
    if args.mask and not args.out:
        raise KuiperError("--mask needs --out, the folder to write the masks to")
    labels = read_labels(args.labels) if args.labels else []
    pairs = output_paths(args.images, args.out, args.mask) if args.out else [(None, None)] * len(args.images)
    graph = load(args.model)
    names = segment_names(labels, score_classes(graph), args.labels)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for path, (mask, confidence), (overlay, raw) in zip(args.images, segment(graph, args.images, args.batch), pairs):
        fractions = class_fractions(mask, len(names))
        result = {"image": str(path), "fractions": {n: round(float(f), 6) for n, f in zip(names, fractions)},
                  "confidence": round(float(confidence.mean()), 4)}
        if overlay:
            save_png(colour_overlay(load_image(path), mask, args.alpha), overlay)
            result["overlay"] = str(overlay)
        if raw:
            save_png(Image.fromarray(mask), raw)
            result["mask"] = str(raw)
        results.append(result)
        if not args.json:
            listed = ", ".join(f"{n} {f:.1%}" for n, f in zip(names, fractions) if f > 0)
            print(f"{path}: {listed}")
    return results


def load_llm(args: argparse.Namespace):
    """The model and tokenizer named on the command line; KuiperError if the file has no tokenizer."""
    from kuiper.llm.model import load as load_model

    if not Path(args.model).exists():
        raise KuiperError(f"{args.model}: no such model file or folder")
    model, tokenizer = load_model(args.model, max_seq_len=args.context)
    if tokenizer is None:
        raise KuiperError(f"{args.model} has no tokenizer (tokenizer.json beside config.json)")
    if args.int8:
        from kuiper.quant import quantize_model

        model = quantize_model(model, args.int8)
    return model, tokenizer


def sampler_from(args: argparse.Namespace):
    """The Sampler the command-line knobs describe."""
    from kuiper.llm.sample import Sampler

    return Sampler(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.seed)


def generate_text(args: argparse.Namespace) -> dict:
    """Continue a prompt (in the model's chat template unless --raw), streaming the text as it comes."""
    from kuiper.llm.generate import Stats, generate
    from kuiper.llm.tokenizer import StreamDecoder, chat_prompt

    model, tokenizer = load_llm(args)
    text = args.prompt
    if not args.raw and tokenizer.chat_template:
        text = chat_prompt([{"role": "user", "content": args.prompt}], tokenizer.chat_template)
    stats, decoder, pieces = Stats(), StreamDecoder(tokenizer), []
    stop = tokenizer.eos_ids
    for token in generate(model, tokenizer.encode(text), sampler_from(args), args.max_tokens, stop, 0, stats):
        pieces.append("" if token in stop else decoder.push(token))
        if not args.json:
            print(pieces[-1], end="", flush=True)
    pieces.append(decoder.flush())
    if not args.json:
        print(pieces[-1])
        print(stats, file=sys.stderr)
    return {"text": "".join(pieces), "prompt_tokens": stats.prompt_tokens, "new_tokens": stats.new_tokens,
            "prefill_tok_s": round(stats.prefill_rate, 2), "decode_tok_s": round(stats.decode_rate, 2)}


def chat(args: argparse.Namespace) -> None:
    """An interactive conversation; an empty line, Ctrl-D or Ctrl-C ends it."""
    from kuiper.llm.generate import Chat, Stats

    model, tokenizer = load_llm(args)
    if not tokenizer.chat_template:
        raise KuiperError(f"{args.model} has no chat template (tokenizer.chat_template)")
    conversation = Chat(model, tokenizer, sampler_from(args), args.max_tokens)
    print("kuiper chat: an empty line, Ctrl-D or Ctrl-C ends the conversation", file=sys.stderr)
    try:
        while text := input("> ").strip():
            stats = Stats()
            try:
                for piece in conversation.say(text, stats):
                    print(piece, end="", flush=True)
            except ShapeError as err:
                print(f"\n[{err}: starting a new conversation]", file=sys.stderr)
                conversation = Chat(model, tokenizer, sampler_from(args), args.max_tokens)
            print(f"\n[{stats}]", file=sys.stderr)
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)


def bench(args: argparse.Namespace) -> list[dict]:
    """Time kuiper against PyTorch: whole models, or every conv, pool and activation of the zoo (`ops`)."""
    if len(args.targets) == 1 and is_llm(Path(args.targets[0])):
        result = benchmarks.bench_llm(args.targets[0], args.prompt_tokens, args.decode_tokens,
                                      llama_cpp_files=args.llama_cpp, int8=args.int8, device=args.device)
        if not args.json:
            print(benchmarks.format_llm_rows(result))
        return [result.as_json()]
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


def quantize_file(args: argparse.Namespace) -> dict:
    """Write a GGUF model as a Q8_0 GGUF file that llama.cpp and kuiper both load."""
    from kuiper.quant import quantize_gguf

    source, out = Path(args.model), Path(args.out)
    if source.suffix != ".gguf" or not source.is_file():
        raise KuiperError(f"{source}: kuiper quantize reads a .gguf file")
    if out.resolve() == source.resolve():
        raise KuiperError(f"{out}: the output would overwrite the source")
    quantize_gguf(source, out, args.group)
    result = {"source": str(source), "out": str(out), "bytes": out.stat().st_size}
    if not args.json:
        print(f"wrote {out}: Q8_0, {result['bytes'] / 1e6:.0f} MB (from {source.stat().st_size / 1e6:.0f} MB)")
    return result


def add_int8(parser: argparse.ArgumentParser) -> None:
    """--int8 GROUP: quantize the linear weights to int8 after loading."""
    parser.add_argument("--int8", type=int, choices=(32, 64, 128), metavar="GROUP",
                        help="run with int8 linear weights, one scale per GROUP weights (32, 64 or 128)")


def is_llm(path: Path) -> bool:
    """Whether a bench target is a language model: a .gguf file or a Hugging Face folder."""
    return path.suffix == ".gguf" or (path / "config.json").is_file()


def add_sampling(parser: argparse.ArgumentParser) -> None:
    """The options shared by generate and chat."""
    parser.add_argument("model", help="a .gguf file, or a Hugging Face folder (config.json, model.safetensors)")
    parser.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: all)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="above 1 discourages repeats")
    parser.add_argument("--seed", type=int, help="seed for sampling, for repeatable text")
    parser.add_argument("--context", type=int, default=2048, help="KV cache length in tokens (default 2048)")
    add_int8(parser)


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
    cut = commands.add_parser("segment", help="label every pixel with a segmentation model (UNet)")
    cut.add_argument("model", help="the model's .pnnx.param (its .pnnx.bin beside it)")
    cut.add_argument("images", nargs="+", help="image files")
    cut.add_argument("--labels", type=Path, help="class names, one per line, with or without the background "
                     "(default: numbers)")
    cut.add_argument("--out", type=Path, help="write a colour overlay NAME.png per image here")
    cut.add_argument("--alpha", type=float, default=0.5, help="overlay opacity, 0 to 1 (default 0.5)")
    cut.add_argument("--mask", action="store_true", help="also write the class mask NAME_mask.png (needs --out)")
    cut.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    cut.add_argument("--json", action="store_true", help="print machine-readable JSON")
    cut.set_defaults(func=segment_images)
    write = commands.add_parser("generate", help="continue a prompt with a language model, streaming the text")
    add_sampling(write)
    write.add_argument("--prompt", required=True, help="the text to continue or the question to answer")
    write.add_argument("--raw", action="store_true", help="do not wrap the prompt in the model's chat template")
    write.add_argument("--json", action="store_true", help="print machine-readable JSON at the end instead")
    write.set_defaults(func=generate_text)
    talk = commands.add_parser("chat", help="talk to a chat model (an empty line or Ctrl-C ends)")
    add_sampling(talk)
    talk.set_defaults(func=chat, json=False)
    run_bench = commands.add_parser("bench", help="time kuiper against PyTorch in one process")
    run_bench.add_argument("targets", nargs="+", help="model .pnnx.param files, `ops` for the operator table, "
                           "or one language model (.gguf file or Hugging Face folder)")
    run_bench.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    run_bench.add_argument("--models", type=Path, default=Path("data/models"), help="the zoo's folder")
    run_bench.add_argument("--prompt-tokens", type=int, default=64, help="LLM prompt length (default 64)")
    run_bench.add_argument("--decode-tokens", type=int, default=64, help="LLM tokens to generate (default 64)")
    run_bench.add_argument("--llama-cpp", type=Path, nargs="*", help="GGUF files to time in llama.cpp too "
                           "(default: the model itself, when llama-cpp-python is installed)")
    run_bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                           help="LLM benchmark on the CPU or the GPU (lesson 10; needs cupy and a GPU)")
    add_int8(run_bench)
    run_bench.add_argument("--json", action="store_true", help="print machine-readable JSON")
    run_bench.set_defaults(func=bench)
    shrink = commands.add_parser("quantize", help="write a GGUF language model as a Q8_0 GGUF file (int8)")
    shrink.add_argument("model", help="the source .gguf file")
    shrink.add_argument("out", help="the Q8_0 .gguf file to write")
    shrink.add_argument("--group", type=int, choices=(32, 64, 128), default=32,
                        help="weights per scale; GGUF's Q8_0 has 32 (64 and 128: use --int8 at run time)")
    shrink.add_argument("--json", action="store_true", help="print machine-readable JSON")
    shrink.set_defaults(func=quantize_file)
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
