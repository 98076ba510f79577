#!/usr/bin/env python3
"""Checks that weights exported by `simclr export` load into torchvision's ResNet and give the
features `simclr embed` computes.

Usage (the PyTorch venv of scripts/bench.sh, outside git):
    simclr export --checkpoint runs/x --out enc.safetensors
    simclr embed --weights enc.safetensors --split test --out emb.safetensors
    python scripts/check-torchvision.py enc.safetensors emb.safetensors

Reads the bundled Fashion-MNIST test images (assets/fashion-mnist-sample), so the encoder must
take 1-channel 28 px input. Prints the keys torchvision reports missing / unexpected (only
`fc.*` may be missing) and the largest difference between the two sets of features.
"""
import gzip
import json
import pathlib
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file
from safetensors import safe_open
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


def build(meta):
    model = json.loads(meta["model"])
    arch, width, in_ch = model["arch"], float(model["width"]), int(model["in_channels"])
    block = Bottleneck if arch == "resnet50" else BasicBlock
    layers = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}[arch]
    if width == 1.0:
        net = getattr(torchvision.models, arch)()
    else:  # torchvision has no width multiplier: build ResNet with scaled planes
        class Wide(ResNet):
            def __init__(self):
                nn.Module.__init__(self)
                self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
                self.inplanes = int(64 * width)
                self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
                self.bn1 = nn.BatchNorm2d(self.inplanes)
                self.relu = nn.ReLU(inplace=True)
                self.maxpool = nn.MaxPool2d(3, 2, 1)
                self.layer1 = self._make_layer(block, int(64 * width), layers[0])
                self.layer2 = self._make_layer(block, int(128 * width), layers[1], stride=2)
                self.layer3 = self._make_layer(block, int(256 * width), layers[2], stride=2)
                self.layer4 = self._make_layer(block, int(512 * width), layers[3], stride=2)
                self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
                self.fc = nn.Linear(int(512 * width) * block.expansion, 1000)
        net = Wide()
    planes = int(64 * width)
    if model["stem"] == "cifar":  # 3x3 stride-1 conv1, no max-pool: only conv1's shape changes
        net.conv1 = nn.Conv2d(in_ch, planes, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    else:
        net.conv1 = nn.Conv2d(in_ch, planes, 7, 2, 3, bias=False)
    return net


def idx_images(path):
    with gzip.open(path) as f:
        data = f.read()
    n, h, w = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, h, w)


def main():
    weights, embeddings = sys.argv[1], sys.argv[2]
    with safe_open(weights, "pt") as f:
        meta = f.metadata()
    net = build(meta)
    result = net.load_state_dict(load_file(weights), strict=False)
    print("missing:", result.missing_keys)
    print("unexpected:", result.unexpected_keys)
    assert all(k.startswith("fc.") for k in result.missing_keys), "only fc.* may be missing"
    assert not result.unexpected_keys
    net.fc = nn.Identity()
    net.eval()
    root = pathlib.Path(__file__).resolve().parent.parent / "assets" / "fashion-mnist-sample"
    x = torch.from_numpy(idx_images(root / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0)
    assert int(meta["image_size"]) == x.shape[-1], "this check needs an encoder of 28 px input"
    mean, std = json.loads(meta["normalize_mean"]), json.loads(meta["normalize_std"])
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        h = net(x)
    ours = load_file(embeddings)["embeddings"]
    diff = (h - ours).abs().max().item()
    print(f"features: {tuple(h.shape)}, max |torchvision - simclr| = {diff:.3g}, "
          f"max |feature| = {h.abs().max().item():.3g}")
    assert diff < 1e-4 * max(1.0, h.abs().max().item()), "features differ"
    print("ok: torchvision loads the weights and computes the same features")


if __name__ == "__main__":
    main()
