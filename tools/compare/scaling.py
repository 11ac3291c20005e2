#!/usr/bin/env python3
"""Multi-core scaling of convkit beside PyTorch (CPU, oneDNN) and onnxruntime (MLAS) on the layer suite.

Made for a machine with more cores than the development host (the 16-core device machine),
where PyTorch and onnxruntime are installed and Rust is not: the `convkit` binary is built
elsewhere in release and passed with `--binary`. First some GiB of memory are touched (a fresh
VM backs its pages on first touch). Then for each thread count:
  1. `convkit tune --threads N --wisdom FILE` tunes the whole suite (measured mode; its time
     is reported);
  2. for each layer, `--rounds` alternations of: `convkit bench --layers NAME` (from that
     wisdom); PyTorch: `torch.nn.functional` conv, then the layer's activation and pool, eager
     mode under `torch.inference_mode()`, the faster of NCHW and channels_last,
     `torch.set_num_threads(N)`; onnxruntime on the one-layer ONNX model of compare.py (graph
     optimizations on). Each engine keeps its fastest median (the machine's interference comes
     in bursts).
Each peer's median is over repeated runs after warm-up (at least 5 runs and `--min-s`
seconds); GFLOP/s use the suite's FLOP count. Results are written after every thread count,
so a run stopped at its time limit still leaves the thread counts it finished.

Usage:
    python3 tools/compare/scaling.py --binary target/release/convkit [--threads 1,4,8,16]
        [--layers a,b] [--rounds 2] [--min-s 0.2] [--no-ort] [--touch-gib 8] --out DIR
Writes DIR/scaling.json (one row per layer and thread count) and DIR/scaling.md (per-layer
table, geomean rows, speed-up over one thread per engine).
"""
import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402  (the suite's FLOP count and ONNX model, shared with compare.py)


def time_median_ms(fn, min_s):
    for _ in range(3):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_s and len(times) < 200):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def torch_layer(l, channels_last):
    """A closure running the layer (conv, activation, pool) in PyTorch, weights made once; with
    `channels_last`, a 2-D layer's input and weights are in NHWC memory order (oneDNN's NCHW
    path reorders to its blocked layout on every call, so either order may be the faster)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(7)
    rank = len(l["kernel"])
    cin_g = l["input"][1] // l["groups"]
    x = torch.randn(l["input"], generator=gen)
    w = torch.randn([l["out_channels"], cin_g] + l["kernel"], generator=gen) / math.sqrt(cin_g * math.prod(l["kernel"]))
    b = 0.1 * torch.randn(l["out_channels"], generator=gen) if l.get("bias", True) else None
    if channels_last:
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    conv = F.conv2d if rank == 2 else F.conv1d
    act = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "gelu": F.gelu}[l.get("activation", "none")]
    pool = l.get("pool")
    if pool is None:
        pooled = lambda t: t  # noqa: E731
    elif pool["kind"] in ("global_max", "global_avg"):
        fn = {("global_max", 2): F.adaptive_max_pool2d, ("global_avg", 2): F.adaptive_avg_pool2d,
              ("global_max", 1): F.adaptive_max_pool1d, ("global_avg", 1): F.adaptive_avg_pool1d}[(pool["kind"], rank)]
        pooled = lambda t: fn(t, 1)  # noqa: E731
    else:
        fn = {("max", 2): F.max_pool2d, ("avg", 2): F.avg_pool2d, ("max", 1): F.max_pool1d, ("avg", 1): F.avg_pool1d}[(pool["kind"], rank)]
        size, stride, pad = pool["size"], pool.get("stride", pool["size"]), pool.get("padding", [0] * rank)
        pooled = lambda t: fn(t, size, stride, pad)  # noqa: E731

    def run():
        with torch.inference_mode():
            return pooled(act(conv(x, w, b, l["stride"], l["padding"], l["dilation"], l["groups"])))

    return run


def time_torch(l, min_s):
    """PyTorch's median ms for the layer and the memory order that gave it (the faster of NCHW
    and, for 2-D layers, channels_last), or (None, error) when PyTorch fails on it."""
    best = (None, "-")
    for channels_last in ([False, True] if len(l["kernel"]) == 2 else [False]):
        try:
            ms = time_median_ms(torch_layer(l, channels_last), min_s)
        except Exception as e:  # a peer's failure leaves its cell empty, the run goes on
            print(f"pytorch: {l['name']}: {e}", file=sys.stderr, flush=True)
            continue
        if best[0] is None or ms < best[0]:
            best = (ms, "nhwc" if channels_last else "nchw")
    return best


def time_ort(l, threads, min_s):
    try:
        return compare.time_ort(l, threads, min_s)
    except Exception as e:
        print(f"onnxruntime: {l['name']}: {e}", file=sys.stderr, flush=True)
        return None


def machine_info():
    info = {"platform": platform.platform(), "nproc": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
        flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
        info["avx512f"] = "avx512f" in flags
        info["amx"] = "amx_tile" in flags
    except OSError:
        pass
    try:
        info["lscpu"] = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        info["lscpu"] = ""
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_parallel"] = torch.__config__.parallel_info()
        info["mkldnn"] = torch.backends.mkldnn.is_available()
    except ImportError:
        info["torch"] = None
    return info


def write_results(out, info, rows):
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    engines = [("convkit", "convkit_gflops"), ("pytorch", "torch_gflops"), ("onnxruntime", "ort_gflops")]
    threads = sorted({r["threads"] for r in rows})
    lines = [f"Machine: {info.get('cpu', '?')}, {info.get('nproc')} logical CPUs, torch {info.get('torch')}.", "",
             "| threads | layer | convkit algo | convkit GFLOP/s | % of peak | PyTorch (layout) | onnxruntime | convkit / PyTorch | convkit / ORT |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]

    def fmt(v):
        return f"{v:.1f}" if v else "-"

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    for r in rows:
        lines.append(f"| {r['threads']} | {r['layer']} | {r['convkit_algo']} | {r['convkit_gflops']:.1f} | "
                     f"{100 * r['convkit_gflops'] / r['peak_gflops']:.0f}% | {fmt(r['torch_gflops'])} ({r['torch_layout']}) | "
                     f"{fmt(r['ort_gflops'])} | {ratio(r['convkit_gflops'], r['torch_gflops'])} | "
                     f"{ratio(r['convkit_gflops'], r['ort_gflops'])} |")
    geo = {}
    for t in threads:
        rs = [r for r in rows if r["threads"] == t]
        for name, key in engines:
            vals = [r[key] for r in rs]
            geo[(t, name)] = math.exp(sum(math.log(v) for v in vals) / len(vals)) if all(vals) else None
    lines += ["", "Geometric mean GFLOP/s over the layers, and speed-up over the same engine on one thread:", "",
              "| threads | convkit peak | convkit | PyTorch | onnxruntime | convkit / PyTorch | convkit x | PyTorch x | onnxruntime x |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in threads:
        peak = next(r["peak_gflops"] for r in rows if r["threads"] == t)

        def speedup(name):
            base, cur = geo.get((1, name)), geo.get((t, name))
            return f"{cur / base:.2f}x" if base and cur else "-"

        lines.append(f"| {t} | {peak:.0f} | {fmt(geo[(t, 'convkit')])} | {fmt(geo[(t, 'pytorch')])} | {fmt(geo[(t, 'onnxruntime')])} | "
                     f"{ratio(geo[(t, 'convkit')], geo[(t, 'pytorch')])} | {speedup('convkit')} | {speedup('pytorch')} | {speedup('onnxruntime')} |")
    lines += ["", "FMA peak as convkit read it at each call (its spread shows the interference): " + ", ".join(
        f"{t} threads {info[f'peak_range_{t}t'][0]:.0f}-{info[f'peak_range_{t}t'][1]:.0f}" for t in threads
        if f"peak_range_{t}t" in info) + "."]
    with open(os.path.join(out, "scaling.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", required=True, help="a release build of the convkit command")
    ap.add_argument("--suite", default=compare.SUITE)
    ap.add_argument("--layers", default="")
    ap.add_argument("--threads", default="1,4,8,16")
    ap.add_argument("--min-s", type=float, default=0.2, help="seconds of timed runs per peer and layer")
    ap.add_argument("--no-ort", action="store_true", help="skip onnxruntime")
    ap.add_argument("--touch-gib", type=int, default=8, help="GiB of memory to touch before timing")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the engines per layer; each keeps its fastest")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch

    os.makedirs(args.out, exist_ok=True)
    with open(args.suite) as f:
        layers = json.load(f)["layers"]
    if args.layers:
        wanted = args.layers.split(",")
        layers = [l for l in layers if l["name"] in wanted]
    info = machine_info()
    if args.touch_gib > 0:
        # A fresh VM backs its memory on first touch: the first run on the device machine read
        # one-thread figures 0.6x what the two-thread run after it implied (res2.1x1a 76 GFLOP/s
        # on one thread, 214 on two). Touch the memory once before anything is timed.
        import numpy as np

        started = time.perf_counter()
        np.ones(args.touch_gib << 28, dtype=np.float32).sum()
        print(f"touched {args.touch_gib} GiB in {time.perf_counter() - started:.1f} s", flush=True)
    print(f"{info.get('cpu')}: {info.get('nproc')} logical CPUs, avx512f {info.get('avx512f')}, torch {info.get('torch')}", flush=True)
    rows, lines = [], []
    for threads in [int(t) for t in args.threads.split(",")]:
        started = time.perf_counter()
        wisdom = os.path.join(args.out, f"wisdom-{threads}t.json")
        if os.path.exists(wisdom):  # tune afresh, as for a new user
            os.remove(wisdom)
        cmd = [args.binary, "tune", "--suite", args.suite, "--threads", str(threads), "--wisdom", wisdom]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        tune_s = time.perf_counter() - started
        torch.set_num_threads(threads)
        peaks = []
        for l in layers:
            gf = compare.flops(l) / 1e9

            def fastest(a, b):
                return b if a is None else a if b is None else min(a, b)

            # Rounds of the three engines in turn, each keeping its fastest median: this
            # machine's interference comes in bursts (a second one-thread pass of the suite
            # once read 1.9x the first's times, PyTorch's alike).
            ck_ms = torch_ms = ort_ms = None
            torch_layout = "-"
            for _ in range(args.rounds):
                ms, algo, peak = compare.time_convkit(args.binary, l["name"], threads, wisdom)
                ck_ms, peaks = fastest(ck_ms, ms), peaks + [peak]
                t_ms, t_layout = time_torch(l, args.min_s)
                if t_ms is not None and (torch_ms is None or t_ms < torch_ms):
                    torch_ms, torch_layout = t_ms, t_layout
                ort_ms = fastest(ort_ms, None if args.no_ort else time_ort(l, threads, args.min_s))
            rows.append({"layer": l["name"], "threads": threads, "gflop": gf, "convkit_algo": algo,
                         "convkit_ms": ck_ms, "convkit_gflops": gf / ck_ms * 1e3,
                         "peak_gflops": max(peaks),
                         "torch_ms": torch_ms, "torch_gflops": gf / torch_ms * 1e3 if torch_ms else None,
                         "torch_layout": torch_layout,
                         "ort_ms": ort_ms, "ort_gflops": gf / ort_ms * 1e3 if ort_ms else None})
            r = rows[-1]
            print(f"{threads:2}t {l['name']:24} convkit {r['convkit_gflops']:7.1f} ({r['convkit_algo']})  "
                  f"pytorch {r['torch_gflops'] or 0:7.1f} ({torch_layout})  ort {r['ort_gflops'] or 0:7.1f}", flush=True)
        info[f"peak_range_{threads}t"] = [min(peaks), max(peaks)]
        info[f"tune_s_{threads}t"] = tune_s
        print(f"{threads} threads: tuning {tune_s:.1f} s, all {time.perf_counter() - started:.1f} s, "
              f"FMA peak read {min(peaks):.0f}-{max(peaks):.0f} GFLOP/s", flush=True)
        lines = write_results(args.out, info, rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
