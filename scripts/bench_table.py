#!/usr/bin/env python3
"""Turns the JSON lines of scripts/bench.sh into one table (stdout) and a JSON file.

Usage: bench_table.py RESULTS.jsonl OUT.json
Share of peak (override the per-core figure with PEAK_GFLOPS_PER_CORE): training FLOPs (3x the forward pass, counted layer by layer for the ResNet
with CIFAR stem and the projection head) per second, over cores x 2 FMA pipes x fp32 lanes
(16 with full-width AVX-512, else 8) x 2 flops x the clock /proc/cpuinfo reports (the base
clock: a core that boosts above it can show more than 100%).
"""
import json
import os
import sys
from statistics import median


def resnet_cifar_forward_flops(arch, width, size, channels, proj_dim=128):
    """Multiply-adds x 2 of one view's forward pass (convolutions and linear layers)."""
    blocks = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}[arch]
    planes = [int(p * width) for p in (64, 128, 256, 512)]
    flops = 2 * channels * planes[0] * 9 * size * size  # 3x3 stem, stride 1
    cin, h = planes[0], size
    if arch == "resnet50":  # bottlenecks (torchvision v1.5: the stride on the 3x3)
        for stage, (n, p) in enumerate(zip(blocks, planes)):
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                h_out = (h + stride - 1) // stride
                flops += 2 * cin * p * h * h  # 1x1 reduce
                flops += 2 * p * p * 9 * h_out * h_out  # 3x3
                flops += 2 * p * 4 * p * h_out * h_out  # 1x1 expand
                if stride != 1 or cin != 4 * p:
                    flops += 2 * cin * 4 * p * h_out * h_out  # 1x1 downsample
                cin, h = 4 * p, h_out
        return flops + 2 * cin * cin + 2 * cin * proj_dim
    for stage, (n, p) in enumerate(zip(blocks, planes)):
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            h_out = (h + stride - 1) // stride
            flops += 2 * cin * p * 9 * h_out * h_out  # conv1
            flops += 2 * p * p * 9 * h_out * h_out  # conv2
            if stride != 1 or cin != p:
                flops += 2 * cin * p * h_out * h_out  # 1x1 downsample
            cin, h = p, h_out
    flops += 2 * cin * cin + 2 * cin * proj_dim  # head
    return flops


def cpu_info():
    """The first core's `cpu MHz`, `flags` and (AMD) `cpu family` from /proc/cpuinfo."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def fp32_lanes(info):
    """fp32 lanes per FMA pipe: 16 where AVX-512 runs on full-width units, else 8 (AVX2).

    Zen 4 (AMD family 25) reports avx512f but executes it on 256-bit pipes, so it counts 8."""
    if "avx512f" not in info.get("flags", "").split():
        return 8
    if info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25":
        return 8
    return 16


def peak_per_core():
    """(fp32 GFLOP/s of one core or None, how it was reckoned)."""
    if os.environ.get("PEAK_GFLOPS_PER_CORE"):
        return float(os.environ["PEAK_GFLOPS_PER_CORE"]), "PEAK_GFLOPS_PER_CORE"
    info = cpu_info()
    lanes = fp32_lanes(info)
    basis = f"cores x 2 FMA x {lanes} lanes x 2 x clock"
    try:
        return 2 * lanes * 2 * float(info["cpu MHz"]) / 1000.0, basis
    except (KeyError, ValueError):
        return None, basis


def throughput_row(what, unit, ours, pytorch, **extra):
    """A table row without a share of peak: ours, PyTorch's (or None) and their ratio."""
    row = {"what": what, "unit": unit, "ours": ours, "pytorch": pytorch,
           "ratio": pytorch and ours / pytorch, "ours_peak_share": None,
           "pytorch_peak_share": None, "ours_rss_mib": None, "pytorch_rss_mib": None}
    row.update(extra)
    return row


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
    out_path = sys.argv[2]
    table = []
    per_core, basis = peak_per_core()
    # Step measurements come in rounds that alternate simclr-rs and PyTorch: each PyTorch line
    # follows ours for the same configuration (its JSON does not name the channel count).
    groups = {}
    last = None
    for r in rows:
        if r["bench"] != "step":
            continue
        if r.get("framework") == "simclr-rs":
            last = (r["arch"], r["width"], r["size"], r["views"], r["channels"],
                    r.get("precision", "f32"))
            groups.setdefault(last, ([], []))[0].append(r)
        elif last is not None:
            groups[last][1].append(r)
    for ours, refs in groups.values():
        r = ours[0]
        vps = median([o["views_per_s"] for o in ours])
        ref_vps = median([t["views_per_s"] for t in refs]) if refs else None
        ratios = [o["views_per_s"] / t["views_per_s"] for o, t in zip(ours, refs)]
        flops = 3 * resnet_cifar_forward_flops(r["arch"], r["width"], r["size"], r["channels"])
        peak = per_core and per_core * r["threads"]
        share = lambda v: None if peak is None or v is None else flops * v / 1e9 / peak
        table.append({
            "what": f"step {r['arch']} w{r['width']:g} {r['views']}x{r['size']}x{r['size']}x{r['channels']}"
                    + (" bf16" if r.get("precision") == "bf16" else ""),
            "unit": "views/s",
            "ours": vps,
            "pytorch": ref_vps,
            "ratio": median(ratios) if ratios else None,
            "ratio_min": min(ratios) if ratios else None,
            "ratio_max": max(ratios) if ratios else None,
            "rounds": len(ours),
            "ours_peak_share": share(vps),
            "pytorch_peak_share": share(ref_vps),
            "ours_rss_mib": max(o["peak_rss_mib"] for o in ours),
            "pytorch_rss_mib": max(t["peak_rss_mib"] for t in refs) if refs else None,
        })
    # `simclr pretrain` on a step's shapes, against PyTorch's bare step (and our bench_step).
    for r in (r for r in rows if r["bench"] == "pretrain"):
        key = (r["arch"], r["width"], r["size"], r["views"], r["channels"], "f32")
        ours, refs = groups.get(key, ([], []))
        ref_vps = median([t["views_per_s"] for t in refs]) if refs else None
        step_vps = median([o["views_per_s"] for o in ours]) if ours else None
        table.append(throughput_row(
            f"pretrain {r['arch']} w{r['width']:g} {r['views']}x{r['size']}x{r['size']}x{r['channels']}",
            "views/s", r["views_per_s"], ref_vps,
            of_bench_step=step_vps and r["views_per_s"] / step_vps))
    for r in (r for r in rows if r["bench"] == "embed" and r["framework"] == "simclr-rs"):
        ref = next((t for t in rows if t["bench"] == "embed" and t["framework"] == "pytorch"
                    and (t["arch"], t["width"], t["size"], t["channels"])
                    == (r["arch"], r["width"], r["size"], r["channels"])), None)
        table.append(throughput_row(
            f"features {r['arch']} w{r['width']:g} {r['size']}x{r['size']}x{r['channels']}",
            "images/s", r["images_per_s"], ref and ref["images_per_s"]))
    for r in (r for r in rows if r["bench"] == "augment" and r.get("impl") == "simclr-rs"):
        ref = next((t for t in rows if t["bench"] == "augment" and t.get("framework") == "torchvision"
                    and t["size"] == r["size"] and t["blur"] == r["blur"]
                    and t["threads"] == r["threads"]), None)
        table.append(throughput_row(
            f"augment {r['size']}x{r['size']}{' blur' if r['blur'] else ''} {r['threads']} thread{'s' if r['threads'] > 1 else ''}",
            "images/s", r["images_per_s"], ref and ref["images_per_s"],
            ours_rss_mib=r.get("peak_rss_mib"), pytorch_rss_mib=ref and ref["peak_rss_mib"]))

    def fmt(v, spec):
        width = int(spec.split(".")[0] or 0)
        return "-".rjust(width) if v is None else format(v, spec)

    head = f"{'measurement':36} {'unit':9} {'simclr-rs':>10} {'PyTorch':>10} {'ratio':>7} {'ours %peak':>10} {'torch %peak':>11} {'RSS MiB':>9} {'torch RSS':>9}"
    print(head)
    print("-" * len(head))
    for t in table:
        print(f"{t['what']:36} {t['unit']:9} {fmt(t['ours'], '10.1f')} {fmt(t['pytorch'], '10.1f')} "
              f"{fmt(t['ratio'], '6.2f')}x {fmt(t['ours_peak_share'] and 100 * t['ours_peak_share'], '9.1f')}% "
              f"{fmt(t['pytorch_peak_share'] and 100 * t['pytorch_peak_share'], '10.1f')}% "
              f"{fmt(t['ours_rss_mib'], '9.0f')} {fmt(t['pytorch_rss_mib'], '9.0f')}")
    for t in table:
        if t.get("of_bench_step"):
            print(f"{t['what']}: {100 * t['of_bench_step']:.0f}% of bench_step's views/s on the same shapes "
                  "(LARS, the loader, augmentation and metrics against the bare SGD step)")
    for t in table:
        if t.get("rounds", 1) > 1 and t["ratio_min"] is not None:
            print(f"{t['what']}: ratio {t['ratio_min']:.2f}-{t['ratio_max']:.2f}x over {t['rounds']} rounds "
                  "(medians above; peak RSS the largest of the rounds)")
    print(f"\nfp32 peak assumed: {fmt(per_core and 2 * per_core, '.0f')} GFLOP/s at 2 threads ({basis})")
    with open(out_path, "w") as f:
        json.dump({"table": table, "raw": rows, "cpus": os.cpu_count()}, f, indent=1)
    print(f"written {out_path}")


if __name__ == "__main__":
    main()
