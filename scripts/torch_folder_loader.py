#!/usr/bin/env python3
"""torchvision's side of scripts/bench-folder.sh: ImageFolder + DataLoader(num_workers=W)
giving two SimCLR views of each image, with the transforms `simclr pretrain` applies at
--image-size SIZE and --jitter-strength S (RandomResizedCrop scale 0.08-1, flip, colour
jitter 0.8S/0.8S/0.8S/0.2S with p 0.8, grayscale p 0.2, Gaussian blur p 0.5 with a kernel a
tenth of the side for views larger than 32 px, ToTensor, Normalize). Times --batches batches
after the first, as loader_throughput does; prints one JSON line.

Usage: torch_folder_loader.py --data DIR [--size 96] [--batch 256] [--batches 40] [--workers 2]
"""
import argparse
import json
import resource
import time

import torch
from torchvision import datasets
from torchvision import transforms as T


class TwoViews:
    def __init__(self, view):
        self.view = view

    def __call__(self, img):
        return torch.stack([self.view(img), self.view(img)])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--jitter", type=float, default=0.5)
    a = p.parse_args()
    torch.set_num_threads(1)
    s = a.jitter
    view = T.Compose([
        T.RandomResizedCrop(a.size, scale=(0.08, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        T.RandomGrayscale(p=0.2),
        *([T.RandomApply([T.GaussianBlur(max(3, (a.size // 10) | 1), (0.1, 2.0))], p=0.5)]
          if a.size > 32 else []),
        T.ToTensor(),
        T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    t0 = time.perf_counter()
    ds = datasets.ImageFolder(a.data, transform=TwoViews(view))
    open_s = time.perf_counter() - t0
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True,
                                         num_workers=a.workers, drop_last=True,
                                         persistent_workers=a.workers > 0, prefetch_factor=2
                                         if a.workers > 0 else None)

    def batches():  # epoch after epoch, as the simclr-rs loader runs
        while True:
            yield from loader

    it = batches()
    next(it)
    t = time.perf_counter()
    done = 0
    for _ in range(a.batches):
        x, _ = next(it)
        done += x.shape[0]
    dt = time.perf_counter() - t
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024.0
    print(json.dumps({"bench": "loader", "framework": "torchvision", "images": len(ds),
                      "size": a.size, "batch": a.batch, "workers": a.workers, "open_s": open_s,
                      "images_per_s": done / dt, "peak_rss_mib_largest_process": rss}))


if __name__ == "__main__":
    main()
