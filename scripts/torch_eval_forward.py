#!/usr/bin/env python3
"""PyTorch's side of the feature-extraction row of scripts/bench.sh: the eval forward (no
gradient, BatchNorm running statistics) of the encoder that torch_reference.py builds (its
build_model, imported from the reference, without the projection head), 256 images a batch,
on ready tensors. Prints one JSON line: the median images/s of --rounds passes over --images.

Usage: torch_eval_forward.py --reference PATH [--arch resnet18] [--width 1.0] [--size 32]
       [--channels 3] [--images 2048] [--rounds 3] [--threads 2]
"""
import argparse
import importlib.util
import json
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reference", required=True)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    spec = importlib.util.spec_from_file_location("torch_reference", a.reference)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    encoder = ref.build_model(a.arch, a.width, a.channels, 128)[0].eval()
    x = torch.randn(a.images, a.channels, a.size, a.size)
    rates = []
    with torch.no_grad():
        encoder(x[:256])
        for _ in range(a.rounds):
            t = time.perf_counter()
            for b in x.split(256):
                encoder(b)
            rates.append(a.images / (time.perf_counter() - t))
    print(json.dumps({"bench": "embed", "framework": "pytorch", "torch": torch.__version__,
                      "arch": a.arch, "width": a.width, "size": a.size, "channels": a.channels,
                      "images": a.images, "threads": a.threads,
                      "images_per_s": statistics.median(rates)}))


if __name__ == "__main__":
    main()
