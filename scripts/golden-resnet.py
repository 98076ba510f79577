#!/usr/bin/env python3
"""Golden values for simclr-model's forward pass: small torchvision ResNets with a SimCLR
projection head, their weights, a fixed input, and outputs in eval and train mode (plus the
BatchNorm running statistics after the train-mode forward), saved as safetensors fixtures.

Run (from the repository root, in a venv with torch, torchvision and safetensors):
    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch torchvision safetensors
    .venv-torch/bin/python scripts/golden-resnet.py
"""
import torch
import torch.nn as nn
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


def scaled_resnet(block, layers, width, in_ch, stem):
    """torchvision's ResNet with stage widths int(64 w), int(128 w), ... (as simclr-rs)."""
    net = ResNet(block, layers)  # build, then rebuild the layers at the scaled widths
    net.inplanes = int(64 * width)
    net.conv1 = (nn.Conv2d(in_ch, net.inplanes, 7, 2, 3, bias=False) if stem == "imagenet"
                 else nn.Conv2d(in_ch, net.inplanes, 3, 1, 1, bias=False))
    net.bn1 = nn.BatchNorm2d(net.inplanes)
    if stem == "cifar":
        net.maxpool = nn.Identity()
    for i in range(4):
        setattr(net, f"layer{i + 1}", net._make_layer(block, int((64 << i) * width), layers[i],
                                                     stride=1 if i == 0 else 2))
    net.fc = nn.Identity()
    return net


def golden(name, block, layers, width, in_ch, stem, hw, proj_dim):
    torch.manual_seed(0)
    enc = scaled_resnet(block, layers, width, in_ch, stem)
    feat = int(512 * width) * block.expansion
    head = nn.Sequential(nn.Linear(feat, feat), nn.BatchNorm1d(feat), nn.ReLU(), nn.Linear(feat, proj_dim))
    # Non-trivial BatchNorm parameters and running statistics, so eval mode tests them.
    with torch.no_grad():
        for m in list(enc.modules()) + list(head.modules()):
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    state.update({f"projector.{k}": v.clone() for k, v in head.state_dict().items()})
    state = {k: v.float().contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    x = torch.randn(4, in_ch, hw, hw)
    out = {"input": x}
    enc.eval(); head.eval()
    with torch.no_grad():
        h = enc(x); out["eval.h"] = h; out["eval.z"] = head(h)
    enc.train(); head.train()
    with torch.no_grad():
        h = enc(x); out["train.h"] = h; out["train.z"] = head(h)
    after = {k: v for k, v in list(enc.state_dict().items()) + [(f"projector.{k}", v) for k, v in head.state_dict().items()]
             if k.endswith("running_mean") or k.endswith("running_var")}
    out.update({f"after.{k}": v.float().contiguous() for k, v in after.items()})
    out.update({f"weights.{k}": v for k, v in state.items()})
    save_file({k: v.contiguous() for k, v in out.items()}, f"crates/simclr-model/tests/fixtures/{name}.safetensors")
    print(name, sum(v.numel() for v in out.values()), "values")


golden("golden_resnet18_cifar", BasicBlock, [2, 2, 2, 2], 1 / 16, 3, "cifar", 16, 16)
golden("golden_resnet50_imagenet", Bottleneck, [3, 4, 6, 3], 1 / 16, 1, "imagenet", 33, 8)
