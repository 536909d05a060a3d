"""`kuiper bench`: time kuiper against PyTorch in one process, same inputs, same thread count.

Hand-written (no lesson builds it). torch is a benchmark reference here, imported only when a
benchmark runs: kuiper itself never needs it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from kuiper.errors import KuiperError
from kuiper.pnnx import Operator, load_pnnx
from kuiper.registry import create_layer
from kuiper.tensor import Tensor


@dataclass
class Row:
    """One benchmark line: what ran, on what shape, and the median milliseconds of each engine."""

    name: str
    shape: str
    kuiper_ms: float
    torch_ms: float

    @property
    def ratio(self) -> float:
        """kuiper's time over torch's: below 1 means kuiper is faster."""
        return self.kuiper_ms / self.torch_ms


def import_torch():
    """torch with the same number of threads as kuiper's numba pool; KuiperError if not installed.

    torch's OpenMP pool inherits the short spin (GOMP_SPINCOUNT=10000) that kuiper sets (kuiper.layers.conv):
    in one process both engines' idle threads wait the same way, briefly, so neither steals the other's cores."""
    try:
        import torch
    except ImportError:
        raise KuiperError("kuiper bench compares against PyTorch: pip install 'kuiper[course]'") from None
    torch.set_num_threads(numba.get_num_threads())
    return torch


def same_run_ratio(fn: Callable[[], object], reference: Callable[[], object], repeat: int = 9) -> float:
    """Fastest wall time of `fn` over the fastest of `reference`, the two timed alternately after one
    warm-up call each, so that both see the same load (a ratio, not a time, is what a busy machine keeps)."""
    fn(), reference()
    best = [math.inf, math.inf]
    for _ in range(repeat):
        for i, call in enumerate((fn, reference)):
            start = time.perf_counter()
            call()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0] / best[1]


def median_ms(fn: Callable[[], object], repeat: int = 5, warmup: int = 2) -> float:
    """Median wall time of `fn` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def torch_twin(op: Operator, torch):
    """PyTorch's function for one benchmarked operator, with the operator's own weights."""
    F, p = torch.nn.functional, op.params
    if op.type == "nn.Conv2d":
        weight = torch.from_numpy(np.array(op.attrs["weight"].data))
        bias = torch.from_numpy(np.array(op.attrs["bias"].data)) if "bias" in op.attrs else None
        return lambda x: F.conv2d(x, weight, bias, p["stride"], p["padding"], p["dilation"], p["groups"])
    if op.type == "nn.ConvTranspose2d":
        weight = torch.from_numpy(np.array(op.attrs["weight"].data))
        bias = torch.from_numpy(np.array(op.attrs["bias"].data)) if "bias" in op.attrs else None
        return lambda x: F.conv_transpose2d(x, weight, bias, p["stride"], p["padding"], p["output_padding"],
                                            p["groups"], p["dilation"])
    if op.type == "nn.MaxPool2d":
        return lambda x: F.max_pool2d(x, p["kernel_size"], p["stride"], p["padding"], p["dilation"],
                                      ceil_mode=p.get("ceil_mode", False))
    if op.type in ("nn.AdaptiveAvgPool2d", "F.adaptive_avg_pool2d"):
        return lambda x: F.adaptive_avg_pool2d(x, p["output_size"])
    if op.type == "nn.Linear":
        weight = torch.from_numpy(np.array(op.attrs["weight"].data))
        bias = torch.from_numpy(np.array(op.attrs["bias"].data)) if "bias" in op.attrs else None
        return lambda x: F.linear(x, weight, bias)
    if op.type == "nn.LayerNorm":
        weight, bias = (torch.from_numpy(np.array(op.attrs[k].data)) if k in op.attrs else None
                        for k in ("weight", "bias"))
        shape = tuple(np.atleast_1d(p["normalized_shape"]).tolist())
        return lambda x: F.layer_norm(x, shape, weight, bias, p["eps"])
    if op.type == "nn.GELU":
        return lambda x: F.gelu(x, approximate=p.get("approximate", "none"))
    if op.type in ("F.softmax", "nn.Softmax"):
        return lambda x: F.softmax(x, p["dim"])
    if op.type == "nn.ChannelShuffle":
        return lambda x: F.channel_shuffle(x, p["groups"])
    simple = {"nn.ReLU": F.relu, "nn.ReLU6": F.relu6, "nn.SiLU": F.silu, "nn.Hardswish": F.hardswish,
              "nn.Hardsigmoid": F.hardsigmoid, "F.sigmoid": torch.sigmoid}
    if op.type in simple:
        return simple[op.type]
    raise KuiperError(f"no PyTorch twin for {op.where()}")


def operator_rows(model: Path, batch: int, types: tuple[str, ...], torch) -> list[Row]:
    """One row per operator of `types` in `model`, on random input of its annotated shape."""
    graph, rows = load_pnnx(model), []
    rng = np.random.default_rng(0)
    for op in graph.operators:
        if op.type not in types:
            continue
        shape = (batch, *graph.operands[op.inputs[0]].shape[1:])
        x = rng.standard_normal(shape, dtype=np.float32)
        layer, twin, tx = create_layer(op), torch_twin(op, torch), torch.from_numpy(x)
        with torch.no_grad():
            rows.append(Row(f"{model.name.split('.')[0]} {op.name} ({op.type})", "x".join(map(str, shape)),
                            median_ms(lambda: layer(Tensor(x))), median_ms(lambda: twin(tx))))
    return rows


OPERATOR_SUITE = {
    "resnet18": ("nn.Conv2d", "nn.MaxPool2d", "nn.ReLU"),
    "mobilenet_v2": ("nn.Conv2d", "nn.ReLU6"),
    "mobilenet_v3_small": ("nn.Hardswish", "nn.Hardsigmoid", "nn.AdaptiveAvgPool2d"),
    "yolov5n": ("nn.SiLU", "F.sigmoid", "nn.MaxPool2d"),
    "unet_shapes": ("nn.ConvTranspose2d", "nn.Conv2d"),
    "shufflenet_v2": ("nn.Conv2d", "nn.ChannelShuffle"),
    "squeezenet1_1": ("nn.Conv2d", "nn.MaxPool2d"),
    "convnext_tiny": ("nn.Conv2d", "nn.LayerNorm", "nn.GELU", "nn.Linear"),
    "vit_tiny": ("nn.Linear", "nn.LayerNorm", "nn.GELU", "F.softmax"),
    "yolov8n": ("nn.Conv2d", "nn.SiLU", "nn.MaxPool2d"),
}


def bench_ops(models_dir: Path, batch: int = 8) -> list[Row]:
    """Every conv, pool, activation, normalisation and linear layer of the zoo's vision models that
    OPERATOR_SUITE names, with a total per model and type."""
    torch = import_torch()
    rows = []
    for name, types in OPERATOR_SUITE.items():
        path = models_dir / f"{name}.pnnx.param"
        if not path.exists():
            raise KuiperError(f"{path} is missing: run `make models` (tools/zoo.py) first")
        found = operator_rows(path, batch, types, torch)
        for kind in types:
            same = [r for r in found if r.name.endswith(f"({kind})")]
            if same:
                rows.append(Row(f"{name}: all {len(same)} {kind}", f"batch {batch}",
                                sum(r.kuiper_ms for r in same), sum(r.torch_ms for r in same)))
        rows += [r for r in found if r.name.endswith("(nn.Conv2d)") and name == "resnet18"]
    return rows


def format_rows(rows: list[Row]) -> str:
    """A plain-text table of rows."""
    lines = [f"{'operator':52} {'input':20} {'kuiper ms':>10} {'torch ms':>10} {'ratio':>6}"]
    lines += [f"{r.name[:52]:52} {r.shape[:20]:20} {r.kuiper_ms:10.2f} {r.torch_ms:10.2f} {r.ratio:6.2f}"
              for r in rows]
    return "\n".join(lines)


@dataclass
class ModelRow:
    """One model at one batch size: milliseconds per image for each engine, and kuiper's peak memory."""

    model: str
    batch: int
    kuiper_ms: float
    torch_ms: float
    peak_bytes: int
    onnxruntime_ms: float | None = None

    @property
    def ratio(self) -> float:
        """kuiper's time over torch's: below 1 means kuiper is faster."""
        return self.kuiper_ms / self.torch_ms

    def as_json(self) -> dict:
        """The stable JSON form: model, batch, kuiper_ms, torch_ms, ratio, peak_bytes[, onnxruntime_ms,
        ratio_onnxruntime (kuiper's time over onnxruntime's)]."""
        row = {"model": self.model, "batch": self.batch, "kuiper_ms": round(self.kuiper_ms, 3),
               "torch_ms": round(self.torch_ms, 3), "ratio": round(self.ratio, 3), "peak_bytes": self.peak_bytes}
        if self.onnxruntime_ms is not None:
            row["onnxruntime_ms"] = round(self.onnxruntime_ms, 3)
            row["ratio_onnxruntime"] = round(self.kuiper_ms / self.onnxruntime_ms, 3)
        return row


def onnxruntime_runner(path: Path):
    """A function running the ONNX model beside `path` in onnxruntime, or None when either is missing."""
    onnx_file = path.with_name(path.name.replace(".pnnx.param", ".onnx"))
    try:
        import onnxruntime
    except ImportError:
        return None
    if not onnx_file.exists():
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = numba.get_num_threads()
    session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def bench_models(paths: list[Path], batches: list[int], repeat: int = 5) -> list[ModelRow]:
    """kuiper vs the traced PyTorch model (and onnxruntime when installed), ms per image."""
    from kuiper.registry import load

    torch = import_torch()
    rows = []
    for path in map(Path, paths):
        stem = path.name.replace(".pnnx.param", "")
        traced = path.with_name(f"{stem}.torchscript.pt")
        if not traced.exists():
            raise KuiperError(f"{traced} is missing: export the model with tools/zoo.py")
        graph, reference, ort = load(path), torch.jit.load(str(traced)).eval(), onnxruntime_runner(path)
        sample = np.load(path.with_name(f"{stem}.input.npy"))
        for batch in batches:
            x = np.ascontiguousarray(np.repeat(sample, batch, axis=0))
            tx = torch.from_numpy(x)
            with torch.no_grad():
                torch_ms = median_ms(lambda: reference(tx), repeat)
            kuiper_ms = median_ms(lambda: graph(x), repeat)
            ort_ms = median_ms(lambda: ort(x), repeat) / batch if ort else None
            rows.append(ModelRow(stem, batch, kuiper_ms / batch, torch_ms / batch, graph.peak_bytes, ort_ms))
    return rows


def format_model_rows(rows: list[ModelRow]) -> str:
    """A plain-text table: ms per image for each engine, kuiper's ratio to each, and peak activation memory."""
    ort = any(r.onnxruntime_ms is not None for r in rows)
    head = f"{'model':20} {'batch':>5} {'kuiper ms/img':>14} {'torch ms/img':>13} {'ratio':>6} {'peak MiB':>9}"
    lines = [head + (f" {'onnxruntime ms/img':>19} {'vs ort':>7}" if ort else "")]
    for r in rows:
        line = (f"{r.model:20} {r.batch:5d} {r.kuiper_ms:14.2f} {r.torch_ms:13.2f} {r.ratio:6.2f} "
                f"{r.peak_bytes / 2**20:9.1f}")
        if r.onnxruntime_ms is not None:
            line += f" {r.onnxruntime_ms:19.2f} {r.kuiper_ms / r.onnxruntime_ms:7.2f}"
        lines.append(line)
    return "\n".join(lines)


# ---- language models ----------------------------------------------------------------------------

BENCH_TEXT = ("The history of astronomy is the story of people looking up and asking what the lights in the sky "
              "are, how far away they lie, and why they move as they do. ")


@dataclass
class LLMRow:
    """One engine on one model: prompt and generated tokens per second, and for kuiper's rows the peak
    resident set size (bytes) of loading and running that model alone (None where it was not measured)."""

    engine: str
    weights: str
    prefill_tps: float
    decode_tps: float
    peak_rss: int | None = None

    def as_json(self) -> dict:
        """The stable JSON form."""
        return ({"engine": self.engine, "weights": self.weights, "prefill_tok_s": round(self.prefill_tps, 2),
                 "decode_tok_s": round(self.decode_tps, 2)}
                | ({"peak_rss_bytes": self.peak_rss} if self.peak_rss else {}))


@dataclass
class LLMBench:
    """An LLM benchmark: one row per engine, the measured read bandwidth and the bound it sets."""

    model: str
    rows: list[LLMRow]
    weight_bytes: int
    bandwidth: float
    peak_rss: int
    int8_weight_bytes: int | None = None

    def as_json(self) -> dict:
        """The stable JSON form, with each row's decode ratio to transformers."""
        base = next((r.decode_tps for r in self.rows if r.engine == "transformers"), None)
        rows = [r.as_json() | ({"decode_vs_transformers": round(r.decode_tps / base, 3)} if base else {})
                for r in self.rows]
        result = {"model": self.model, "rows": rows, "weight_bytes_per_token": self.weight_bytes,
                  "bandwidth_gb_s": round(self.bandwidth / 1e9, 2), "peak_rss_bytes": self.peak_rss,
                  "decode_bound_tok_s": round(self.bandwidth / self.weight_bytes, 2)}
        if self.int8_weight_bytes:
            result |= {"int8_weight_bytes_per_token": self.int8_weight_bytes,
                       "int8_decode_bound_tok_s": round(self.bandwidth / self.int8_weight_bytes, 2)}
        return result | {"goals": {name: round(value, 3) for name, value in self.goals().items()}}

    def row(self, engine: str, weights: str | None = None) -> LLMRow | None:
        """The first row of `engine` (whose weights start with `weights`, if given), or None."""
        return next((r for r in self.rows if r.engine == engine and (weights is None or r.weights.startswith(weights))),
                    None)

    def goals(self) -> dict[str, float]:
        """The same-run ratios issue 18's goals are stated in: decode as a fraction of the bandwidth bound
        (weight bytes per token / read bandwidth), int8 decode over fp32 decode, prefill and decode over the other
        engines (fp32 against transformers and llama.cpp F32, int8 against llama.cpp Q8_0)."""
        fp32, int8, blocks = self.row("kuiper", "fp32"), self.row("kuiper", "int8"), self.row("kuiper", "gguf")
        found = {"fp32_decode_of_bound": fp32.decode_tps * self.weight_bytes / self.bandwidth} if fp32 else {}
        for name, other in (("fp32", fp32), ("int8", int8)):
            if blocks and other:
                found[f"gguf_decode_vs_{name}"] = blocks.decode_tps / other.decode_tps
                if blocks.peak_rss and other.peak_rss:
                    found[f"gguf_peak_rss_vs_{name}"] = blocks.peak_rss / other.peak_rss
        if fp32 and int8:
            found |= {"int8_decode_of_bound": int8.decode_tps * self.int8_weight_bytes / self.bandwidth,
                      "int8_decode_vs_fp32": int8.decode_tps / fp32.decode_tps,
                      "int8_prefill_vs_fp32": int8.prefill_tps / fp32.prefill_tps}
        for name, mine, engine, weights in (("fp32", fp32, "transformers", "fp32"), ("fp32", fp32, "llama.cpp", "F32"),
                                            ("int8", int8, "llama.cpp", "Q8_0")):
            other = self.row(engine, weights)
            if mine and other:
                peer = engine if name == "fp32" else f"{engine}_{weights}"
                found |= {f"{name}_prefill_vs_{peer}": mine.prefill_tps / other.prefill_tps,
                          f"{name}_decode_vs_{peer}": mine.decode_tps / other.decode_tps}
        return found


@numba.njit(parallel=True, fastmath=True, cache=True)
def _read_all(a: np.ndarray) -> float:
    total = 0.0
    for i in numba.prange(a.size):
        total += a[i]
    return total


def reset_peak_rss() -> None:
    """Start the process's peak resident set size afresh (Linux: write 5 to /proc/self/clear_refs); elsewhere
    nothing, and `peak_rss` keeps the process's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss() -> int:
    """Bytes: the peak resident set size since `reset_peak_rss` (VmHWM of /proc/self/status), or without /proc
    the process's peak (getrusage, whose ru_maxrss is in KiB on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def read_bandwidth(buffer: np.ndarray | None = None, repeat: int = 5) -> float:
    """Bytes per second this machine streams from memory with all of kuiper's threads: the best of `repeat` reads
    of `buffer` (float32, 1-D), by default a new one of 512 MiB (more than most caches hold)."""
    a = np.ones(512 * 2**20 // 4, np.float32) if buffer is None else buffer
    _read_all(a)
    best = min(timed(lambda: _read_all(a)) for _ in range(repeat))
    return a.nbytes / best


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def prompt_ids(tokenizer, n: int) -> list[int]:
    """n token ids of English text, the same for every engine."""
    ids = tokenizer.encode(BENCH_TEXT * (1 + n // 20))
    return ids[:n]


def rates(prefill: Callable[[], object], step: Callable[[int], object], decode_tokens: int,
          passes: int = 2, between: Callable[[], object] | None = None) -> tuple[float, float]:
    """Best prefill and decode seconds over `passes` runs of prefill then `decode_tokens` steps, calling
    `between` (if given) after each run."""
    prefill_s = decode_s = float("inf")
    for _ in range(passes):
        prefill_s = min(prefill_s, timed(prefill))
        decode_s = min(decode_s, timed(lambda: [step(i) for i in range(decode_tokens)]))
        if between is not None:
            between()
    return prefill_s, decode_s


def weight_buffer(model) -> np.ndarray | None:
    """The one buffer a float32 Llama on the CPU streams its matrices from (`ops.pack`), viewed as float32 (1-D);
    None when its head lies in no such buffer (a GPU model, lesson 14's int8 weights)."""
    base = getattr(model.head, "base", None)
    if not isinstance(base, np.ndarray) or base.dtype != np.uint8 or base.ndim != 1:
        return None
    return base[:base.nbytes // 4 * 4].view(np.float32)


def kuiper_rates(model, ids: list[int], decode_tokens: int,
                 between: Callable[[], object] | None = None) -> tuple[float, float]:
    """kuiper's prefill and decode seconds: the prompt at once, then greedy tokens one by one (`rates`)."""
    state = {"token": 0}

    def prefill() -> None:
        state["token"] = int(model.forward(np.array(ids), 0)[-1].argmax())

    def step(i: int) -> None:
        state["token"] = int(model.forward(np.array([state["token"]]), len(ids) + i)[-1].argmax())

    prefill()
    return rates(prefill, step, decode_tokens, between=between)


def transformers_rates(path: Path, ids: list[int], decode_tokens: int, device: str = "cpu") -> tuple[float, float]:
    """transformers' float32 prefill and decode seconds on the same model file, same threads (or GPU)."""
    torch = import_torch()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(path if path.is_dir() else path.parent, dtype=torch.float32)
    model.eval().to(device)
    state = {}

    def prefill() -> None:
        out = model(torch.tensor([ids], device=device), use_cache=True)
        state["cache"], state["token"] = out.past_key_values, int(out.logits[0, -1].argmax())

    def step(i: int) -> None:
        out = model(torch.tensor([[state["token"]]], device=device), cache=state["cache"], use_cache=True)
        state["cache"], state["token"] = out.past_key_values, int(out.logits[0, -1].argmax())

    with torch.inference_mode():
        prefill()
        return rates(prefill, step, decode_tokens)


def llama_cpp_rates(path: Path, ids: list[int], decode_tokens: int) -> tuple[float, float] | None:
    """llama.cpp's prefill and decode seconds on a GGUF file, or None without llama-cpp-python."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    threads = numba.get_num_threads()
    llm = Llama(str(path), n_ctx=len(ids) + decode_tokens + 8, n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    state = {}

    def prefill() -> None:
        llm.reset()
        llm.eval(ids)
        state["token"] = int(np.argmax(llm.scores[llm.n_tokens - 1]))

    def step(i: int) -> None:
        llm.eval([state["token"]])
        state["token"] = int(np.argmax(llm.scores[llm.n_tokens - 1]))

    prefill()
    return rates(prefill, step, decode_tokens)


def gguf_type(path: Path) -> str:
    """The weight type a GGUF file is named for (…-q4_1.gguf → Q4_1), else 'gguf'."""
    return path.stem.rsplit("-", 1)[-1].upper() if "-" in path.stem else "gguf"


def bench_llm(path: str | Path, prompt_tokens: int = 64, decode_tokens: int = 64, llama_cpp: bool = True,
              llama_cpp_files: list[Path] | None = None, transformers: bool = True,
              int8: int | None = None, device: str = "cpu", weights: str = "fp32") -> LLMBench:
    """kuiper float32 (and int8 with groups of `int8` weights) vs transformers float32 and llama.cpp, tok/s,
    on the CPU or, with `device='cuda'`, kuiper float32 and transformers on the GPU (llama.cpp stays out).
    `weights='gguf'` adds a first row: the GGUF file's Q4_1/Q8_0 blocks run as they are (lesson 14).
    Each kuiper row's peak RSS is measured from a reset before its model is loaded (Linux)."""
    from kuiper.llm.model import load

    path = Path(path)
    if not path.exists():
        raise KuiperError(f"{path}: no such model file or folder")
    max_seq_len, rows = prompt_tokens + decode_tokens + 8, []
    if weights == "gguf":
        from kuiper.quant import load_gguf_blocks

        reset_peak_rss()
        blocks, tokenizer = load_gguf_blocks(path, max_seq_len)
        ids = prompt_ids(tokenizer, prompt_tokens)
        seconds = kuiper_rates(blocks, ids, decode_tokens)
        rows.append(LLMRow("kuiper", f"gguf {gguf_type(path)}", *per_second(seconds, len(ids), decode_tokens),
                           peak_rss()))
        del blocks
    reset_peak_rss()
    model, tokenizer = load(path, max_seq_len=max_seq_len)
    model.to(device)
    ids = prompt_ids(tokenizer, prompt_tokens)
    buffer, reads = weight_buffer(model), []  # the bound: reads of the weights between the decode runs, same load
    seconds = kuiper_rates(model, ids, decode_tokens,
                           None if buffer is None else lambda: reads.append(read_bandwidth(buffer, repeat=2)))
    fp32 = LLMRow("kuiper", "fp32", *per_second(seconds, len(ids), decode_tokens), peak_rss())
    rows.append(fp32)
    weight_bytes, bandwidth, int8_bytes = model.weight_bytes, max(reads) if reads else read_bandwidth(), None
    if int8:
        from kuiper.quant import quantize_model

        reset_peak_rss()  # the int8 path is made from the float32 model: its peak includes it
        quantized = quantize_model(model, int8)
        del model
        int8_bytes = quantized.weight_bytes
        seconds = kuiper_rates(quantized, ids, decode_tokens)
        rows.append(LLMRow("kuiper", f"int8 g{int8}", *per_second(seconds, len(ids), decode_tokens), peak_rss()))
        del quantized
    else:
        del model
    if transformers:
        rows.append(LLMRow("transformers", "fp32",
                           *per_second(transformers_rates(path, ids, decode_tokens, device), len(ids), decode_tokens)))
    files = llama_cpp_files if llama_cpp_files is not None else ([path] if path.suffix == ".gguf" else [])
    files = files if device == "cpu" else []
    for file in files if llama_cpp else []:
        seconds = llama_cpp_rates(Path(file), ids, decode_tokens)
        if seconds is not None:
            rows.append(LLMRow("llama.cpp", gguf_type(Path(file)), *per_second(seconds, len(ids), decode_tokens)))
    return LLMBench(path.name, rows, weight_bytes, bandwidth, fp32.peak_rss, int8_bytes)


def per_second(seconds: tuple[float, float], prompt_tokens: int, decode_tokens: int) -> tuple[float, float]:
    """Prefill and decode seconds as tokens per second."""
    return prompt_tokens / seconds[0], decode_tokens / seconds[1]


def format_llm_rows(bench: LLMBench) -> str:
    """A plain-text table of tokens per second, each decode rate as a ratio to transformers, and the bound."""
    base = next((r.decode_tps for r in bench.rows if r.engine == "transformers"), None)
    lines = [f"{bench.model}: {bench.weight_bytes / 1e6:.0f} MB of weights per token, read bandwidth "
             f"{bench.bandwidth / 1e9:.1f} GB/s -> decode bound {bench.bandwidth / bench.weight_bytes:.1f} tok/s; "
             f"kuiper peak RSS {bench.peak_rss / 2**20:.0f} MiB"]
    if bench.int8_weight_bytes:
        lines[0] += (f"; int8: {bench.int8_weight_bytes / 1e6:.0f} MB per token -> decode bound "
                     f"{bench.bandwidth / bench.int8_weight_bytes:.1f} tok/s")
    lines.append(f"{'engine':14} {'weights':9} {'prefill tok/s':>14} {'decode tok/s':>13} {'vs transformers':>16} "
                 f"{'peak RSS MiB':>13}")
    for r in bench.rows:
        ratio = f"{r.decode_tps / base:16.2f}" if base else f"{'':16}"
        rss = f"{r.peak_rss / 2**20:13.0f}" if r.peak_rss else ""
        lines.append(f"{r.engine:14} {r.weights:9} {r.prefill_tps:14.1f} {r.decode_tps:13.1f} {ratio} {rss}".rstrip())
    goals = bench.goals()
    if goals:
        lines.append("same-run ratios: " + ", ".join(f"{name} {value:.2f}" for name, value in goals.items()))
    return "\n".join(lines)
