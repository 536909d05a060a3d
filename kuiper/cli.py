"""The `kuiper` command line: one sub-command per thing the engine can do for a person."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

import kuiper
from kuiper.errors import KuiperError
from kuiper.tensor import Tensor


def demo(args: argparse.Namespace) -> dict:
    """Lesson 01 at a glance: memory order, padding and broadcasting on small tensors."""
    t = Tensor(np.arange(6)).reshape(2, 3)
    features, bias = Tensor.ones(2, 3, 4, 4), Tensor([10.0, 20.0, 30.0]).reshape(3, 1, 1)
    result = {
        "tensor": t.numpy().tolist(),
        "reshape_3x2_row_major": t.reshape(3, 2).numpy().tolist(),
        "reshape_3x2_column_major": t.reshape(3, 2, row_major=False).numpy().tolist(),
        "pad_1_each_side_shape": list(t.pad(1, 1, 1, 1).shape),
        "broadcast_add": {"shapes": [list(features.shape), list(bias.shape)],
                          "result_shape": list((features + bias).shape)},
    }
    if not args.json:
        print(f"kuiper {kuiper.__version__}: lesson 01 demo")
        for key, value in result.items():
            print(f"  {key:26} {value}")
    return result


def bench(args: argparse.Namespace) -> list[dict]:
    """Time kuiper against PyTorch: every conv, pool and activation of the zoo (`ops`)."""
    from kuiper import bench as benchmarks

    if args.targets != ["ops"]:
        raise KuiperError(f"unknown benchmark {' '.join(args.targets)!r}: try `kuiper bench ops`")
    rows = benchmarks.bench_ops(args.models, args.batch[0])
    if not args.json:
        print(benchmarks.format_rows(rows))
    return [dataclasses.asdict(row) | {"ratio": row.ratio} for row in rows]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kuiper", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kuiper {kuiper.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="show what the engine can do so far")
    run_demo.add_argument("--json", action="store_true", help="print machine-readable JSON")
    run_demo.set_defaults(func=demo)
    run_bench = commands.add_parser("bench", help="time kuiper against PyTorch in one process")
    run_bench.add_argument("targets", nargs="+", help="`ops` for the operator table")
    run_bench.add_argument("--batch", type=int, nargs="+", default=[8], help="batch size(s) (default 8)")
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
