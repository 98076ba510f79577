#!/usr/bin/env python3
"""Dumps torchvision ResNet-18 and ResNet-50 state-dict keys and shapes (without fc.*) to the
fixtures simclr-model's tests compare against. num_batches_tracked buffers are left out: simclr-rs
does not keep them, and BatchNorm's load_state_dict fills them in when absent.

Run (from the repository root, in a venv with torch and torchvision):
    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch torchvision
    .venv-torch/bin/python scripts/torchvision-keys.py
"""
import torchvision

for arch in ("resnet18", "resnet50"):
    sd = getattr(torchvision.models, arch)().state_dict()
    lines = [f"{k} {'x'.join(map(str, v.shape))}" for k, v in sd.items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    with open(f"crates/simclr-model/tests/fixtures/{arch}_keys.txt", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(arch, len(lines), "tensors")
