"""How large each method's checkpoint is: what a long run must carry to continue on another machine.

    python benchmarks/checkpoint_sizes.py                                  # full-width ResNet18, all methods
    python benchmarks/checkpoint_sizes.py --dataset fashion-mnist --data-dir /path/to/fashion-mnist
    python benchmarks/checkpoint_sizes.py --methods neulite,fedavg --model cnn --width 0.25

Writes each method's checkpoint as it stands before round 1 (the declared state: the global model
and whatever else the method keeps, such as NeuLite's per-stage output modules) with 100 clients
and the ``paper`` fleet (which decides, e.g., AllSmall's width), and prints a Markdown table of the file sizes. State that grows with
the clients a method has seen (DepthFL's per-client FedDyn vectors) adds to it as the run goes on.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedbench import engine, registry
from fedbench.config import make_config
from fedbench.core import checkpoint
from fedbench.core.setup import snapshot


def checkpoint_mib(method: str, args: argparse.Namespace) -> float:
    config = make_config(overrides={
        "method": method, "model": {"name": args.model, "width": args.width}, "fleet": {"profile": "paper"},
        "data": {"dataset": args.dataset, "data_dir": args.data_dir, "num_clients": 100},
        "tracking": {"enabled": False},
    })
    ctx, _ = engine.prepare(config)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.ckpt"
        checkpoint.save(path, snapshot(engine.make_method(ctx), 0, []))
        return path.stat().st_size / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(p.name for p in registry.available("methods")))
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    print(f"| method | checkpoint MiB ({args.dataset}, {args.model}, width {args.width:g}) |\n|---|---|")
    for method in args.methods.split(","):
        print(f"| {method} | {checkpoint_mib(method, args):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
