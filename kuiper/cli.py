"""The `kuiper` command line: one sub-command per thing the engine can do for a person.

Bad input never ends in a traceback: options are range-checked when they are parsed (argparse's
usage message, exit 2), every other failure prints one line `kuiper: error: ...` on stderr and
exits 1, Ctrl-C exits 130, and output into a closed pipe (`kuiper generate ... | head`) ends quietly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from PIL import Image

import kuiper
from kuiper import bench as benchmarks
from kuiper import workspace
from kuiper.errors import KuiperError, ShapeError
from kuiper.files import atomic_write, same_file
from kuiper.registry import load
from kuiper.vision.classify import classify, load_image, read_labels, top_k
from kuiper.vision.detect import class_name, detect, draw_detections
from kuiper.vision.segment import class_fractions, colour_overlay, score_classes, segment

LABELS = Path(__file__).resolve().parents[1] / "data" / "imagenet_classes.txt"
INTEGER = re.compile(r"[-+]?[0-9]+")  # ASCII digits only: int() also reads '١٢'


class Failures:
    """Per-image errors of a batch: each is reported on stderr at once, and makes the exit status 1."""

    def __init__(self, paths: list[str]):
        self.paths, self.errors = paths, {}

    def report(self) -> list[dict]:
        """Print one line per failed image; their JSON entries."""
        for error in self.errors.values():
            print(f"kuiper: error: {error}", file=sys.stderr)
        return [{"image": self.paths[i], "error": str(e)} for i, e in sorted(self.errors.items())]

    def good(self) -> list[str]:
        """The paths that were read, in order."""
        return [p for i, p in enumerate(self.paths) if i not in self.errors]


def integer(low: int, high: int | None = None):
    """An argparse type: an int in [low, high], else ArgumentTypeError saying expected vs actual."""
    def parse(text: str) -> int:
        if not INTEGER.fullmatch(text.strip()) or not low <= int(text) <= (high if high is not None else int(text)):
            span = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {span}, got {text!r}")
        return int(text)
    return parse


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite float in the interval low..high (open ends as asked), else
    ArgumentTypeError saying expected vs actual (NaN and infinities are refused)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text) if re.fullmatch(r"[-+0-9.eE]+", text.strip()) else math.nan
        except ValueError:
            value = math.nan
        inside = math.isfinite(value) and (low < value if low_open else low <= value) and (
            value < high if high_open else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}")
        return value
    return parse


def utf8_text(text: str) -> str:
    """An argparse type: text that is valid UTF-8 (argv bytes that were not arrive as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not UTF-8 text: {text.encode('utf-8', 'surrogateescape')!r}") from None
    return text


def find(paths: list[str]) -> None:
    """KuiperError naming the first path that is not a file."""
    for path in paths:
        if not Path(path).is_file():
            raise KuiperError(f"{path}: no such file")


def find_pnnx(model: str) -> None:
    """KuiperError unless `model` names a .pnnx.param file (and not a language model or an image)."""
    path = Path(model)
    if path.is_dir() or path.suffix in (".gguf", ".safetensors"):
        raise KuiperError(f"{model}: a language model; this command takes a PNNX image model (.pnnx.param), "
                          f"language models run with `kuiper generate` or `kuiper chat`")
    if path.name.endswith(".pnnx.bin"):
        raise KuiperError(f"{model}: the weights; name the model's .pnnx.param (the .pnnx.bin beside it is read too)")
    find([model])
    with open(path, "rb") as file:
        if not file.read(7) == b"7767517":
            raise KuiperError(f"{model}: not a PNNX model (a .pnnx.param file starts with 7767517)")


def load_graph(args: argparse.Namespace):
    """The image model named on the command line, its layers placed on --device (lesson 13's seam)."""
    graph = load(args.model)
    return graph if args.device == "cpu" else graph.to(args.device)


def run(args: argparse.Namespace) -> list[dict]:
    """Classify images with an ImageNet model: the top-k classes and their probabilities."""
    find_pnnx(args.model)
    find(args.images)
    labels = read_labels(args.labels)
    failures = Failures(args.images)
    probs = classify(load_graph(args), args.images, args.batch, args.size, failures.errors)
    if len(probs) and probs.shape[1] != len(labels):
        raise KuiperError(f"{args.model} gives {probs.shape[1]} scores, but {args.labels} names "
                          f"{len(labels)} classes")
    results = []
    for path, p in zip(failures.good(), probs):
        index, value = top_k(p, args.top)
        top = [{"index": int(i), "class": labels[i], "probability": round(float(v), 6)} for i, v in zip(index, value)]
        results.append({"image": str(path), "top": top})
        if not args.json:
            print(f"{path}: " + ", ".join(f"{t['class']} ({t['probability']:.3f})" for t in top))
    return finish(args, results, failures)


def finish(args: argparse.Namespace, results: list[dict], failures: Failures) -> list[dict]:
    """The results with the failed images' entries in input order; exit status 1 if any failed."""
    failed = failures.report()
    args.status = 1 if failed else 0
    order = {path: i for i, path in enumerate(args.images)}
    return sorted(results + failed, key=lambda r: order[r["image"]])


def output_paths(out: Path, images: list[str], suffixes: tuple[str, ...]) -> list[list[Path]]:
    """Where a verb writes each image's outputs: out/<stem><suffix> for each suffix (detect:
    `.detect.png`); KuiperError if `out` is a file, two images would write the same file, or an
    output would land on an input (compared by identity, so links count)."""
    if out.exists() and not out.is_dir():
        raise KuiperError(f"--out {out}: is a file; expected a folder to write the images in")
    paths = [[out / f"{Path(image).stem}{suffix}" for suffix in suffixes] for image in images]
    seen: dict[Path, str] = {}
    for image, path in ((image, path) for image, group in zip(images, paths) for path in group):
        if path in seen:
            raise KuiperError(f"{seen[path]} and {image} would both be written as {path}")
        seen[path] = image
        clash = next((source for source in images if same_file(path, source)), None)
        if clash is not None:
            raise KuiperError(f"{path}: is the input {clash}; refusing to write over it")
    return paths


def detect_objects(args: argparse.Namespace) -> list[dict]:
    """Detect objects with a YOLO model; optionally write annotated copies of the images."""
    find_pnnx(args.model)
    find(args.images)
    labels = read_labels(args.labels) if args.labels else []
    outputs = [group[0] for group in output_paths(args.out, args.images, (".detect.png",))] if args.out else []
    failures = Failures(args.images)
    found_all = detect(load_graph(args), args.images, args.conf, args.iou, args.batch, args.size, failures.errors)
    results = []
    for path, found in zip(failures.good(), found_all):
        boxes = [{"box": [round(float(v), 1) for v in row[:4]], "score": round(float(row[4]), 4),
                  "class": int(row[5]), "label": class_name(labels, int(row[5]))} for row in found]
        result = {"image": str(path), "detections": boxes}
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            target = outputs[args.images.index(path)]
            with atomic_write(target, args.images) as temporary:
                draw_detections(load_image(path), found, labels).save(temporary)
            result["annotated"] = str(target)
        results.append(result)
        if not args.json:
            listed = ", ".join(f"{b['label']} {b['score']:.2f} at {b['box']}" for b in boxes) or "nothing"
            print(f"{path}: {listed}")
    return finish(args, results, failures)


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


def segment_images(args: argparse.Namespace) -> list[dict]:
    """Segment images: per-class pixel fractions; colour overlays (and raw masks) in --out."""
    find_pnnx(args.model)
    find(args.images)
    if args.mask and not args.out:
        raise KuiperError("--mask needs --out, the folder to write the masks to")
    labels = read_labels(args.labels) if args.labels else []
    suffixes = (".segment.png", ".mask.png") if args.mask else (".segment.png",)
    outputs = output_paths(args.out, args.images, suffixes) if args.out else [[]] * len(args.images)
    graph = load_graph(args)
    names = segment_names(labels, score_classes(graph), args.labels)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for path, (mask, confidence), paths in zip(args.images, segment(graph, args.images, args.batch), outputs):
        fractions = class_fractions(mask, len(names))
        result = {"image": str(path), "fractions": {n: round(float(f), 6) for n, f in zip(names, fractions)},
                  "confidence": round(float(confidence.mean()), 4)}
        pictures = {"overlay": lambda: colour_overlay(load_image(path), mask, args.alpha),
                    "mask": lambda: Image.fromarray(mask)}
        for (kind, picture), target in zip(pictures.items(), paths):
            with atomic_write(target, args.images) as temporary:
                picture().save(temporary)
            result[kind] = str(target)
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
    check_weights(args.model, args.weights, args.int8, args.device)
    if args.weights == "gguf":
        from kuiper.quant import load_gguf_blocks

        model, tokenizer = load_gguf_blocks(args.model, args.context)
    else:
        model, tokenizer = load_model(args.model, max_seq_len=args.context)
    if tokenizer is None:
        raise KuiperError(f"{args.model} has no tokenizer (tokenizer.json beside config.json)")
    if args.int8:
        from kuiper.quant import quantize_model

        model = quantize_model(model, args.int8)
    return (model if args.device == "cpu" else model.to(args.device)), tokenizer


def check_weights(model: str, weights: str, int8: int | None, device: str) -> None:
    """KuiperError for a --weights gguf that cannot be: not a .gguf file, or with --int8 or --device cuda."""
    if weights != "gguf":
        return
    if Path(model).suffix != ".gguf":
        raise KuiperError(f"--weights gguf runs a .gguf file's blocks, got {model}")
    if int8:
        raise KuiperError("--weights gguf runs the file's own blocks; --int8 quantizes float32 weights: choose one")
    if device != "cpu":
        raise KuiperError(f"--weights gguf runs on the CPU only, not --device {device}")


def sampler_from(args: argparse.Namespace):
    """The Sampler the command-line knobs describe."""
    from kuiper.llm.sample import Sampler

    return Sampler(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.seed)


def room_for(model, prompt_tokens: int, wanted: int) -> int:
    """How many new tokens fit in the model's context after the prompt (at most `wanted`); KuiperError
    if the prompt alone does not fit. The last token needs no forward pass, so C - P + 1 fit."""
    context = model.max_seq_len
    if prompt_tokens > context:
        raise KuiperError(f"the prompt has {prompt_tokens} tokens, more than the context of {context} "
                          f"(--context, at most the model's own)")
    return min(wanted, context - prompt_tokens + 1)


def generate_text(args: argparse.Namespace) -> dict:
    """Continue a prompt (in the model's chat template unless --raw), streaming the text as it comes.

    Generation ends at an end-of-sequence token, after --max-tokens, or when the context is full
    (`stopped` says which)."""
    from kuiper.llm.generate import Stats, generate
    from kuiper.llm.tokenizer import StreamDecoder, chat_prompt

    model, tokenizer = load_llm(args)
    text = args.prompt
    if not args.raw and tokenizer.chat_template:
        text = chat_prompt([{"role": "user", "content": args.prompt}], tokenizer.chat_template)
    prompt = tokenizer.encode(text)
    if not prompt:
        raise KuiperError("the prompt is empty: give --prompt some text (--raw adds no template around it)")
    budget = room_for(model, len(prompt), args.max_tokens)
    stats, decoder, pieces, stopped = Stats(), StreamDecoder(tokenizer), [], "max_tokens"
    stop = tokenizer.eos_ids
    for token in generate(model, prompt, sampler_from(args), budget, stop, 0, stats):
        if token in stop:
            stopped = "eos"
        pieces.append("" if token in stop else decoder.push(token))
        if not args.json:
            print(pieces[-1], end="", flush=True)
    if stopped != "eos" and budget < args.max_tokens:
        stopped = "context"
    pieces.append(decoder.flush())
    if not args.json:
        print(pieces[-1])
        print(stats, file=sys.stderr)
        if stopped == "context":
            print(f"[stopped: the context of {model.max_seq_len} tokens is full]", file=sys.stderr)
    return {"text": "".join(pieces), "prompt_tokens": stats.prompt_tokens, "new_tokens": stats.new_tokens,
            "stopped": stopped, "prefill_tok_s": round(stats.prefill_rate, 2),
            "decode_tok_s": round(stats.decode_rate, 2)}


def chat(args: argparse.Namespace) -> None:
    """An interactive conversation; an empty line, Ctrl-D or Ctrl-C ends it."""
    from kuiper.llm.generate import Chat, Stats

    model, tokenizer = load_llm(args)
    if not tokenizer.chat_template:
        raise KuiperError(f"{args.model} has no chat template (tokenizer.chat_template)")
    conversation = Chat(model, tokenizer, sampler_from(args), args.max_tokens)
    print("kuiper chat: an empty line, Ctrl-D or Ctrl-C ends the conversation", file=sys.stderr)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    try:
        while text := input("> ").strip():
            try:
                utf8_text(text)
            except argparse.ArgumentTypeError as err:
                print(f"[{err}: type the line again]", file=sys.stderr)
                continue
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
        check_weights(args.targets[0], args.weights, None, args.device)  # --int8 adds its row to gguf's
        result = benchmarks.bench_llm(args.targets[0], args.prompt_tokens, args.decode_tokens,
                                      llama_cpp_files=args.llama_cpp, int8=args.int8, device=args.device,
                                      weights=args.weights)
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
    with atomic_write(out, [source]) as temporary:
        quantize_gguf(source, temporary, args.group)
    result = {"source": str(source), "out": str(out), "bytes": out.stat().st_size}
    if not args.json:
        print(f"wrote {out}: Q8_0, {result['bytes'] / 1e6:.0f} MB (from {source.stat().st_size / 1e6:.0f} MB)")
    return result


def lab(args: argparse.Namespace) -> dict:
    """The student's workspace: create it (never overwriting a file), reset one lesson, or build the package."""
    folder = args.workspace or workspace.workspace_dir()
    if args.action == "reset":
        if args.lesson is None:
            raise KuiperError("kuiper lab reset needs the lesson number: kuiper lab reset 04")
        try:
            target, backup = workspace.reset(args.lesson, folder)
        except workspace.WorkspaceError as err:
            raise KuiperError(str(err)) from None
        if not args.json:
            print(f"restored {target}" + (f" (your old workbook is {backup.name})" if backup else ""))
        return {"workbook": str(target), "backup": str(backup) if backup else None}
    if args.action == "build":
        package = workspace.student_build(folder)
        if not args.json:
            print(f"your build: {package} (use it with KUIPER_BUILD=student)")
        return {"build": str(package)}
    written = workspace.create(folder)
    if not args.json:
        print(f"{folder}: {len(written)} new workbook(s), {len(workspace.workbooks(folder)) - len(written)} kept as they were")
    return {"workspace": str(folder), "created": [str(p) for p in written]}


def grade_workbooks(args: argparse.Namespace) -> object:
    """Run workbooks headlessly and report PASS / FAIL / TODO per exercise (kuiper/grade.py)."""
    from kuiper import grade

    return grade.main(args)


def add_int8(parser: argparse.ArgumentParser) -> None:
    """--int8 GROUP: quantize the linear weights to int8 after loading; --weights: float32, or the GGUF blocks."""
    parser.add_argument("--int8", type=integer(1), choices=(32, 64, 128), metavar="GROUP",
                        help="run with int8 linear weights, one scale per GROUP weights (32, 64 or 128)")
    parser.add_argument("--weights", choices=("fp32", "gguf"), default="fp32",
                        help="fp32: dequantize the file to float32 at load (default); gguf: keep a .gguf file's "
                             "Q4_1 and Q8_0 blocks and multiply by them directly, several times less memory")


def is_llm(path: Path) -> bool:
    """Whether a bench target is a language model: a .gguf file or a Hugging Face folder."""
    return path.suffix == ".gguf" or (path / "config.json").is_file()


def add_sampling(parser: argparse.ArgumentParser) -> None:
    """The options shared by generate and chat."""
    parser.add_argument("model", help="a .gguf file, or a Hugging Face folder (config.json, model.safetensors)")
    parser.add_argument("--max-tokens", type=integer(1, MAX_CONTEXT), default=256,
                        help="most tokens to generate (default 256)")
    parser.add_argument("--temperature", type=number(0, 100), default=0.0, help="0 is greedy (default)")
    parser.add_argument("--top-k", type=integer(0), default=0, help="keep the k most likely tokens (default 0: all)")
    parser.add_argument("--top-p", type=number(0, 1, low_open=True), default=1.0,
                        help="nucleus sampling mass in (0, 1] (default 1: all)")
    parser.add_argument("--repetition-penalty", type=number(0, 100, low_open=True), default=1.0,
                        help="above 1 discourages repeats (default 1: off)")
    parser.add_argument("--seed", type=integer(0, 2**63 - 1), help="seed for sampling, for repeatable text")
    parser.add_argument("--context", type=integer(1, MAX_CONTEXT), default=2048,
                        help="KV cache length in tokens (default 2048)")
    add_int8(parser)
    add_device(parser)


def add_device(parser: argparse.ArgumentParser) -> None:
    """--device: where the model runs; 'cuda' needs cupy and an NVIDIA GPU (or NUMBA_ENABLE_CUDASIM=1)."""
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu (default) or cuda: an NVIDIA GPU through cupy; layers without a GPU kernel "
                             "run on the CPU, with a warning that names them")


MAX_CONTEXT = 1 << 20  # tokens; a larger KV cache is a typo, not a request
MAX_BATCH = 4096


def add_image_options(parser: argparse.ArgumentParser, default_size: int) -> None:
    """The options run and detect share: model, images, batch and the size for free-size models."""
    parser.add_argument("model", help="the model's .pnnx.param (its .pnnx.bin beside it)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--batch", type=integer(1, MAX_BATCH), default=8, help="images per forward pass (default 8)")
    parser.add_argument("--size", type=integer(1, 8192), help="image side for a model exported with a free input "
                        f"size (1,3,?,?) (default {default_size}; a fixed-size model must be given its own)")
    add_device(parser)


class Parser(argparse.ArgumentParser):
    """argparse, with the CLI's failure contract for bad options too: one line, exit status 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kuiper", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kuiper {kuiper.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("run", help="classify images with an ImageNet model")
    add_image_options(classify, 224)
    classify.add_argument("--top", type=integer(1), default=5, help="how many classes to show (default 5)")
    classify.add_argument("--labels", type=Path, default=LABELS, help="class names, one per line")
    classify.add_argument("--json", action="store_true", help="print machine-readable JSON")
    classify.set_defaults(func=run)
    find_boxes = commands.add_parser("detect", help="detect objects with a YOLO model")
    add_image_options(find_boxes, 640)
    find_boxes.add_argument("--conf", type=number(0, 1), default=0.25, help="confidence threshold (default 0.25)")
    find_boxes.add_argument("--iou", type=number(0, 1), default=0.45, help="NMS IoU threshold (default 0.45)")
    find_boxes.add_argument("--labels", type=Path, help="class names, one per line (default: numbers)")
    find_boxes.add_argument("--out", type=Path, help="write annotated copies of the images in this folder, "
                            "as <name>.detect.png (never over an input)")
    find_boxes.add_argument("--json", action="store_true", help="print machine-readable JSON")
    find_boxes.set_defaults(func=detect_objects)
    cut = commands.add_parser("segment", help="label every pixel with a segmentation model (UNet)")
    cut.add_argument("model", help="the model's .pnnx.param (its .pnnx.bin beside it)")
    cut.add_argument("images", nargs="+", help="image files")
    cut.add_argument("--batch", type=integer(1, MAX_BATCH), default=8, help="images per forward pass (default 8)")
    cut.add_argument("--labels", type=Path, help="class names, one per line, with or without the background "
                     "(default: numbers)")
    cut.add_argument("--out", type=Path, help="write a colour overlay <name>.segment.png per image in this "
                     "folder (never over an input)")
    cut.add_argument("--alpha", type=number(0, 1), default=0.5, help="overlay opacity, 0 to 1 (default 0.5)")
    cut.add_argument("--mask", action="store_true", help="also write the class mask <name>.mask.png (needs --out)")
    cut.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_device(cut)
    cut.set_defaults(func=segment_images)
    write = commands.add_parser("generate", help="continue a prompt with a language model, streaming the text")
    add_sampling(write)
    write.add_argument("--prompt", type=utf8_text, required=True, help="the text to continue or the question to answer")
    write.add_argument("--raw", action="store_true", help="do not wrap the prompt in the model's chat template")
    write.add_argument("--json", action="store_true", help="print machine-readable JSON at the end instead")
    write.set_defaults(func=generate_text)
    talk = commands.add_parser("chat", help="talk to a chat model (an empty line or Ctrl-C ends)")
    add_sampling(talk)
    talk.set_defaults(func=chat, json=False)
    run_bench = commands.add_parser("bench", help="time kuiper against PyTorch in one process")
    run_bench.add_argument("targets", nargs="+", help="model .pnnx.param files, `ops` for the operator table, "
                           "or one language model (.gguf file or Hugging Face folder)")
    run_bench.add_argument("--batch", type=integer(1, MAX_BATCH), nargs="+", default=[1, 8],
                           help="batch sizes (default 1 8)")
    run_bench.add_argument("--models", type=Path, default=Path("data/models"), help="the zoo's folder")
    run_bench.add_argument("--prompt-tokens", type=integer(1, MAX_CONTEXT), default=64,
                           help="LLM prompt length (default 64)")
    run_bench.add_argument("--decode-tokens", type=integer(1, MAX_CONTEXT), default=64,
                           help="LLM tokens to generate (default 64)")
    run_bench.add_argument("--llama-cpp", type=Path, nargs="*", help="GGUF files to time in llama.cpp too "
                           "(default: the model itself, when llama-cpp-python is installed)")
    run_bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                           help="LLM benchmark on the CPU or the GPU (lesson 13; needs cupy and a GPU)")
    add_int8(run_bench)
    run_bench.add_argument("--json", action="store_true", help="print machine-readable JSON")
    run_bench.set_defaults(func=bench)
    shrink = commands.add_parser("quantize", help="write a GGUF language model as a Q8_0 GGUF file (int8)")
    shrink.add_argument("model", help="the source .gguf file")
    shrink.add_argument("out", help="the Q8_0 .gguf file to write")
    shrink.add_argument("--group", type=integer(1), choices=(32, 64, 128), default=32,
                        help="weights per scale; GGUF's Q8_0 has 32 (64 and 128: use --int8 at run time)")
    shrink.add_argument("--json", action="store_true", help="print machine-readable JSON")
    shrink.set_defaults(func=quantize_file)
    workbook = commands.add_parser("lab", help="your workspace: create it, reset a lesson's workbook, build your package")
    workbook.add_argument("action", nargs="?", choices=["create", "reset", "build"], default="create",
                          help="create (default: copy the workbooks you do not have yet, never overwriting), "
                               "reset NN (restore one lesson, keeping a .bak copy), build (your package)")
    workbook.add_argument("lesson", nargs="?", type=int, help="the lesson to reset")
    workbook.add_argument("--workspace", type=Path, help="the workspace folder (default $KUIPER_WORKSPACE or workspace/)")
    workbook.add_argument("--json", action="store_true", help="print machine-readable JSON")
    workbook.set_defaults(func=lab)
    marks = commands.add_parser("grade", help="run workbooks headlessly: PASS / FAIL / TODO per exercise")
    marks.add_argument("--lesson", type=int, action="append", metavar="NN", help="grade only this lesson (repeatable)")
    marks.add_argument("--workspace", type=Path, help="the workspace to grade (default $KUIPER_WORKSPACE or workspace/)")
    marks.add_argument("--class", dest="class_dir", type=Path, metavar="DIR",
                       help="grade every DIR/<student>/NN_*.ipynb into one CSV gradebook")
    marks.add_argument("--out", type=Path, help="the gradebook to write with --class (default DIR/gradebook.csv)")
    marks.add_argument("--tests", action="store_true", help="with --class: also run the package tests per student")
    marks.add_argument("--no-tests", action="store_true", help="skip the lesson's package tests on your build")
    marks.add_argument("--timeout", type=int, default=600, help="seconds per notebook cell (default 600)")
    marks.add_argument("--json", action="store_true", help="print machine-readable JSON")
    marks.set_defaults(func=grade_workbooks)
    return parser


def one_line(err: BaseException | str) -> str:
    """An exception as one line of text."""
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status: 0 success, 1 failure or a bad option (one line on stderr,
    never a traceback), 130 interrupted."""
    try:
        args = build_parser().parse_args(argv)
        args.status = 0
        result = args.func(args)
        if args.json:
            print(json.dumps(result))
        sys.stdout.flush()
        return args.status
    except BrokenPipeError:
        # Python's recipe (docs: signal, "Note on SIGPIPE"): stop writing, and keep the interpreter's
        # final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (KuiperError, OSError, ValueError, UnicodeError) as err:
        print(f"kuiper: error: {one_line(err)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("kuiper: error: out of memory", file=sys.stderr)
        return 1
    except NotImplementedError as err:  # the student build reached an exercise not solved yet
        print(workspace.unsolved_message(err), file=sys.stderr)
        return 1
    except Exception as err:  # a bug in kuiper: still one line, with the type to report it by
        print(f"kuiper: error: {type(err).__name__}: {one_line(err)} (this is a bug in kuiper)", file=sys.stderr)
        return 1
