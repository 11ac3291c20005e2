#!/usr/bin/env python3
"""Side-by-side comparison of convkit with onnxruntime (CPU, MLAS) and OpenVINO (CPU plugin, oneDNN) on the layer suite.

Layers alternate between the engines in one run, so drift of the shared machine hits both
alike. For each layer and thread count: onnxruntime runs a one-layer ONNX model (Conv plus the
layer's activation and pool, graph optimizations on, so MLAS fuses what it can), OpenVINO
runs the same model (f32 precision hint, one stream, latency hint), then `convkit bench
--layers NAME` (auto choice, tuned) runs the same layer. All report the median of repeated
runs after warm-up; GFLOP/s use the suite's FLOP count. Each layer's alternation is repeated
`--rounds` times (default 3) and each engine keeps its fastest median: this host's interference
comes in bursts of seconds, and one 0.3 s measurement inside a burst had put single layers at
half their speed, for any engine. OpenVINO is skipped (a "-" column)
when it cannot be installed.

With `--rust-peers`, candle (the `convkit-candle` crate of integrations/candle, built here:
candle-core's own conv, bias, activation and pool ops) and tract (sonos/tract, the Rust ONNX
engine: the `convkit-tract-bench` crate of integrations/tract, built here, loading the same
one-layer ONNX model) join each layer's alternation. tract runs a model on the calling thread,
so it is timed in the one-thread rows only.

Usage (creates its own virtualenv with numpy, onnx, onnxruntime and openvino on first use):
    python3 tools/compare/compare.py [--layers a,b] [--threads 1,2] [--rounds 3] [--out DIR] [--rust-peers]
                                     [--layout nchw|nhwc]
`--layout nhwc` times convkit on NHWC tensors (the layout LiteRT/XNNPACK run in), against the
same NCHW ONNX models for the other engines.
Writes DIR/compare.md (a markdown table with ratios and a geomean row), DIR/compare.json, and
three SVG charts: DIR/gflops.svg (GFLOP/s per layer per engine with the FMA peak line, one
thread), DIR/roofline.svg (each layer's arithmetic intensity against its GFLOP/s, under the
FMA peak and the L2 and DRAM bandwidth lines measured here) and DIR/scaling.svg (geomean
GFLOP/s per engine per thread count).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
SUITE = os.path.join(ROOT, "benches", "layers.json")
VENV = os.environ.get("CONVKIT_COMPARE_VENV", os.path.join(ROOT, "target", "compare-venv"))


def ensure_venv():
    """Re-executes this script inside a virtualenv that has onnxruntime."""
    try:
        import numpy  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(py):
        sys.exit("error: onnxruntime is not importable inside the compare virtualenv")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "-q", "numpy", "onnx", "onnxruntime"])
        # OpenVINO is optional: a failed install leaves its column empty.
        subprocess.call([py, "-m", "pip", "install", "-q", "openvino"])
    os.execv(py, [py] + sys.argv)


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def flops(l):
    sp = l["input"][2:]
    outs = [out_size(sp[i], l["kernel"][i], l["stride"][i], l["padding"][i], l["dilation"][i]) for i in range(len(sp))]
    cin = l["input"][1] // l["groups"]
    return 2 * l["input"][0] * l["out_channels"] * math.prod(outs) * cin * math.prod(l["kernel"])


def build_model(l):
    """The layer as ONNX: Conv, then the activation, then the pool."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    rank = len(l["kernel"])
    cin_g = l["input"][1] // l["groups"]
    w = (rng.standard_normal([l["out_channels"], cin_g] + l["kernel"]) / math.sqrt(cin_g * math.prod(l["kernel"]))).astype(np.float32)
    b = (0.1 * rng.standard_normal([l["out_channels"]])).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    conv_in = ["X", "W"]
    if l.get("bias", True):
        inits.append(numpy_helper.from_array(b, "B"))
        conv_in.append("B")
    nodes = [helper.make_node("Conv", conv_in, ["C"], kernel_shape=l["kernel"], strides=l["stride"],
                              pads=l["padding"] * 2, dilations=l["dilation"], group=l["groups"])]
    cur = "C"
    act = l.get("activation", "none")
    if act == "relu":
        nodes.append(helper.make_node("Relu", [cur], ["A"]))
        cur = "A"
    elif act == "relu6":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", [cur, "lo", "hi"], ["A"]))
        cur = "A"
    elif act == "gelu":  # exact erf form; onnxruntime fuses it into one Gelu
        inits += [numpy_helper.from_array(np.array(math.sqrt(2), np.float32), "r2"),
                  numpy_helper.from_array(np.array(1, np.float32), "one"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "half")]
        nodes += [helper.make_node("Div", [cur, "r2"], ["g1"]), helper.make_node("Erf", ["g1"], ["g2"]),
                  helper.make_node("Add", ["g2", "one"], ["g3"]), helper.make_node("Mul", [cur, "g3"], ["g4"]),
                  helper.make_node("Mul", ["g4", "half"], ["A"])]
        cur = "A"
    elif act != "none":
        raise SystemExit(f"error: activation {act} not mapped to ONNX in this script")
    pool = l.get("pool")
    if pool:
        if pool["kind"] == "global_max":
            nodes.append(helper.make_node("GlobalMaxPool", [cur], ["P"]))
        elif pool["kind"] == "global_avg":
            nodes.append(helper.make_node("GlobalAveragePool", [cur], ["P"]))
        else:
            op = "MaxPool" if pool["kind"] == "max" else "AveragePool"
            nodes.append(helper.make_node(op, [cur], ["P"], kernel_shape=pool["size"],
                                          strides=pool.get("stride", pool["size"]),
                                          pads=pool.get("padding", [0] * rank) * 2))
        cur = "P"
    nodes.append(helper.make_node("Identity", [cur], ["Y"]))
    graph = helper.make_graph(nodes, l["name"], [helper.make_tensor_value_info("X", TensorProto.FLOAT, l["input"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    # IR version 9 (ONNX 1.13+, enough for opset 17): newer onnx packages write a newer IR
    # than the onnxruntime beside them may read (onnx 1.23 wrote IR 14, which onnxruntime 1.30
    # refused: "max supported IR version: 13").
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model.SerializeToString()


def time_ort(l, threads, min_s=0.3):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(build_model(l), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(l["input"]).astype(np.float32)
    for _ in range(2):
        sess.run(None, {"X": x})
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_s and len(times) < 200):
        t = time.perf_counter()
        sess.run(None, {"X": x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def time_openvino(l, threads, min_s=0.3):
    """OpenVINO's CPU plugin on the same ONNX model, or None when it is not installed."""
    try:
        import numpy as np
        import openvino as ov
    except ImportError:
        return None
    import tempfile

    core = ov.Core()
    with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
        f.write(build_model(l))
        path = f.name
    try:
        cfg = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
               "INFERENCE_NUM_THREADS": str(threads), "INFERENCE_PRECISION_HINT": "f32"}
        compiled = core.compile_model(core.read_model(path), "CPU", cfg)
    finally:
        os.unlink(path)
    req = compiled.create_infer_request()
    x = np.random.default_rng(1).standard_normal(l["input"]).astype(np.float32)
    req.set_input_tensor(ov.Tensor(x))
    for _ in range(2):
        req.infer()
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_s and len(times) < 200):
        t = time.perf_counter()
        req.infer()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def time_tract(binary, l, threads):
    """tract on the same ONNX model, one thread (None without the binary, for threads > 1, or
    when tract cannot load the model)."""
    if not binary or threads != 1:
        return None
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
        f.write(build_model(l))
        path = f.name
    try:
        r = subprocess.run([binary, "--model", path, "--input", ",".join(map(str, l["input"]))],
                           capture_output=True, text=True)
    finally:
        os.unlink(path)
    if r.returncode != 0:
        print(f"tract: {l['name']}: {r.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout)["median_ms"]


def time_candle(binary, name, threads):
    """candle on one suite layer (None when the binary is absent or skips the layer)."""
    if not binary:
        return None
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([binary, "--suite", SUITE, "--layer", name], check=True, capture_output=True,
                         text=True, env=env).stdout
    return json.loads(out).get("median_ms")


def time_convkit(binary, name, threads, wisdom, layout="nchw"):
    out = subprocess.run([binary, "bench", "--layers", name, "--threads", str(threads), "--format", "json",
                          "--wisdom", wisdom, "--layout", layout],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out)["results"][0]
    return r["median_ms"], r["algo"], json.loads(out)["machine"]["peak_gflops"]


def measure_bandwidth():
    """(L2, DRAM) copy bandwidth in GB/s (bytes read + written), measured with numpy."""
    import numpy as np

    def copy_rate(nbytes, reps):
        a = np.ones(nbytes // 4, np.float32)
        b = np.empty_like(a)
        np.copyto(b, a)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                np.copyto(b, a)
            best = min(best, time.perf_counter() - t)
        return 2 * nbytes * reps / best / 1e9

    # 256 KiB a side: source and destination fill a 512 KiB L2. (Copies of 128 KiB and less
    # measured 3-4 GB/s here: numpy's per-call cost, not the cache.)
    return copy_rate(256 << 10, 4000), copy_rate(256 << 20, 3)


def layer_bytes(l):
    """The least traffic of a layer: input, weights and conv output once, 4 bytes each."""
    sp = l["input"][2:]
    outs = [out_size(sp[i], l["kernel"][i], l["stride"][i], l["padding"][i], l["dilation"][i]) for i in range(len(sp))]
    w = l["out_channels"] * (l["input"][1] // l["groups"]) * math.prod(l["kernel"])
    return 4 * (math.prod(l["input"]) + w + l["input"][0] * l["out_channels"] * math.prod(outs))


COLORS = {"convkit": "#1f77b4", "onnxruntime": "#ff7f0e", "openvino": "#2ca02c", "candle": "#9467bd",
          "tract": "#8c564b"}


def svg_doc(w, h, body, title):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">'
            f'<rect width="{w}" height="{h}" fill="white"/><text x="{w / 2}" y="18" text-anchor="middle" font-size="14">'
            f'{title}</text>{body}</svg>\n')


def legend(x, y, names):
    return "".join(f'<rect x="{x}" y="{y + 16 * i}" width="10" height="10" fill="{COLORS[n]}"/>'
                   f'<text x="{x + 14}" y="{y + 9 + 16 * i}">{n}</text>' for i, n in enumerate(names))


def chart_gflops(rows, peak, path):
    rs = [r for r in rows if r["threads"] == 1]
    engines = [("convkit", "convkit_gflops"), ("onnxruntime", "ort_gflops"), ("openvino", "ov_gflops"),
               ("candle", "candle_gflops"), ("tract", "tract_gflops")]
    top = max([peak] + [r.get(k) or 0 for r in rs for _, k in engines]) * 1.1
    W, H, L, B = 60 + 26 * len(rs) * 6, 460, 50, 150
    sy = lambda v: 30 + (H - B - 30) * (1 - v / top)  # noqa: E731
    body = f'<line x1="{L}" y1="{sy(peak)}" x2="{W - 10}" y2="{sy(peak)}" stroke="red" stroke-dasharray="4"/>'
    body += f'<text x="{W - 12}" y="{sy(peak) - 3}" text-anchor="end" fill="red">FMA peak {peak:.0f}</text>'
    for t in range(0, int(top) + 1, 50):
        body += f'<text x="{L - 4}" y="{sy(t) + 4}" text-anchor="end">{t}</text><line x1="{L}" y1="{sy(t)}" x2="{W - 10}" y2="{sy(t)}" stroke="#eee"/>'
    for i, r in enumerate(rs):
        x0 = L + 10 + i * 26 * 6
        for j, (name, k) in enumerate(engines):
            if r.get(k):
                body += f'<rect x="{x0 + j * 26}" y="{sy(r[k])}" width="24" height="{sy(0) - sy(r[k])}" fill="{COLORS[name]}"/>'
        body += f'<text transform="translate({x0 + 40},{H - B + 8}) rotate(60)">{r["layer"]}</text>'
    body += legend(L + 10, 30, [n for n, _ in engines])
    with open(path, "w") as f:
        f.write(svg_doc(W, H, body, "GFLOP/s per layer, one thread (effective for Winograd)"))


def chart_roofline(rows, layers, peak, bw, path):
    import math as m
    rs = [r for r in rows if r["threads"] == 1]
    by = {l["name"]: l for l in layers}
    pts = [(r["gflop"] * 1e9 / layer_bytes(by[r["layer"]]), r) for r in rs]
    W, H, L, B = 720, 480, 60, 50
    xs = [p[0] for p in pts]
    x_lo, x_hi = m.log10(max(min(xs) / 2, 0.1)), m.log10(max(xs) * 2)
    y_lo, y_hi = m.log10(1), m.log10(peak * 3)
    sx = lambda v: L + (W - L - 20) * (m.log10(v) - x_lo) / (x_hi - x_lo)  # noqa: E731
    sy = lambda v: H - B - (H - B - 30) * (m.log10(max(v, 1e-9)) - y_lo) / (y_hi - y_lo)  # noqa: E731
    body = ""
    for name, gbs, color in [("L2", bw[0], "#999"), ("DRAM", bw[1], "#555")]:
        x_knee = peak / gbs
        a, b = 10 ** x_lo, min(x_knee, 10 ** x_hi)
        body += f'<line x1="{sx(a)}" y1="{sy(a * gbs)}" x2="{sx(b)}" y2="{sy(b * gbs)}" stroke="{color}"/>'
        body += f'<text x="{sx(a) + 4}" y="{sy(a * gbs) - 4}" fill="{color}">{name} {gbs:.0f} GB/s</text>'
    body += f'<line x1="{sx(10 ** x_lo)}" y1="{sy(peak)}" x2="{sx(10 ** x_hi)}" y2="{sy(peak)}" stroke="red" stroke-dasharray="4"/>'
    body += f'<text x="{W - 22}" y="{sy(peak) - 4}" text-anchor="end" fill="red">FMA peak {peak:.0f} GFLOP/s</text>'
    for ai, r in pts:
        body += f'<circle cx="{sx(ai)}" cy="{sy(r["convkit_gflops"])}" r="4" fill="{COLORS["convkit"]}"><title>{r["layer"]}</title></circle>'
        body += f'<circle cx="{sx(ai)}" cy="{sy(r["ort_gflops"])}" r="3" fill="{COLORS["onnxruntime"]}"><title>{r["layer"]}</title></circle>'
    for d in range(int(m.floor(x_lo)), int(m.ceil(x_hi)) + 1):
        if x_lo <= d <= x_hi:
            body += f'<text x="{sx(10 ** d)}" y="{H - B + 16}" text-anchor="middle">{10 ** d:g}</text>'
    for d in range(0, int(m.ceil(y_hi)) + 1):
        if y_lo <= d <= y_hi:
            body += f'<text x="{L - 4}" y="{sy(10 ** d) + 4}" text-anchor="end">{10 ** d:g}</text>'
    body += f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">arithmetic intensity (FLOP per byte of input + weights + output)</text>'
    body += f'<text transform="translate(14,{H / 2}) rotate(-90)" text-anchor="middle">GFLOP/s (log)</text>'
    body += legend(L + 10, 30, ["convkit", "onnxruntime"])
    with open(path, "w") as f:
        f.write(svg_doc(W, H, body, "Roofline, one thread"))


def chart_scaling(rows, path):
    threads = sorted({r["threads"] for r in rows})
    engines = [("convkit", "convkit_gflops"), ("onnxruntime", "ort_gflops"), ("openvino", "ov_gflops"),
               ("candle", "candle_gflops"), ("tract", "tract_gflops")]
    geo = {}
    for t in threads:
        rs = [r for r in rows if r["threads"] == t]
        for n, k in engines:
            if all(r.get(k) for r in rs):
                geo[(n, t)] = math.exp(sum(math.log(r[k]) for r in rs) / len(rs))
    top = max(geo.values()) * 1.15
    W, H, L, B = 120 + 150 * len(threads), 360, 50, 40
    sy = lambda v: 30 + (H - B - 30) * (1 - v / top)  # noqa: E731
    body = ""
    for i, t in enumerate(threads):
        x0 = L + 20 + i * 150
        for j, (n, _) in enumerate(engines):
            v = geo.get((n, t))
            if v:
                body += f'<rect x="{x0 + j * 28}" y="{sy(v)}" width="26" height="{sy(0) - sy(v)}" fill="{COLORS[n]}"/>'
                body += f'<text x="{x0 + j * 28 + 13}" y="{sy(v) - 3}" text-anchor="middle" font-size="9">{v:.0f}</text>'
        body += f'<text x="{x0 + 40}" y="{H - B + 16}" text-anchor="middle">{t} thread(s)</text>'
    body += legend(W - 110, 30, [n for n, _ in engines])
    with open(path, "w") as f:
        f.write(svg_doc(W, H, body, "Suite geomean GFLOP/s by thread count"))


def main():
    ensure_venv()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3, help="alternations per layer; each engine keeps its fastest median")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "compare"))
    ap.add_argument("--charts-from", default="", help="redraw the charts from a compare.json, measuring nothing")
    ap.add_argument("--layout", default="nchw", choices=["nchw", "nhwc"],
                    help="convkit's tensor layout (onnxruntime and OpenVINO run the NCHW ONNX model either way)")
    ap.add_argument("--rust-peers", action="store_true",
                    help="add candle and tract (builds integrations/candle and integrations/tract)")
    args = ap.parse_args()
    if args.charts_from:
        with open(SUITE) as f:
            layers = json.load(f)["layers"]
        with open(args.charts_from) as f:
            rows = json.load(f)
        bw = measure_bandwidth()
        os.makedirs(args.out, exist_ok=True)
        peak1 = next(r["peak_gflops"] for r in rows if r["threads"] == 1)
        chart_gflops(rows, peak1, os.path.join(args.out, "gflops.svg"))
        chart_roofline(rows, layers, peak1, bw, os.path.join(args.out, "roofline.svg"))
        chart_scaling(rows, os.path.join(args.out, "scaling.svg"))
        print(f"charts in {args.out} (L2 {bw[0]:.0f} GB/s, DRAM {bw[1]:.0f} GB/s)")
        return
    with open(SUITE) as f:
        layers = json.load(f)["layers"]
    if args.layers:
        wanted = args.layers.split(",")
        layers = [l for l in layers if l["name"] in wanted]
    subprocess.check_call(["cargo", "build", "--release", "-q", "--bin", "convkit"], cwd=ROOT)
    binary = os.path.join(ROOT, "target", "release", "convkit")
    candle = tract = None
    if args.rust_peers:
        subprocess.check_call(["cargo", "build", "--release", "-q", "-p", "convkit-candle"], cwd=ROOT)
        candle = os.path.join(ROOT, "target", "release", "convkit-candle")
        subprocess.check_call(["cargo", "build", "--release", "-q", "-p", "convkit-tract-bench"], cwd=ROOT)
        tract = os.path.join(ROOT, "target", "release", "convkit-tract-bench")
    # A wisdom file of this run's own: the choices are tuned by the build being measured (the
    # user's default file may hold choices an older build made; one such file had kept im2col
    # for resnet50.res5.3x3 on 2 threads, 0.6x the Winograd a fresh tuning picks).
    os.makedirs(args.out, exist_ok=True)
    wisdom = os.path.join(args.out, "wisdom.json")
    if os.path.exists(wisdom):
        os.unlink(wisdom)
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for l in layers:
            gf = flops(l) / 1e9
            def fastest(a, b):
                return b if a is None else a if b is None else min(a, b)

            ort_ms = ov_ms = cd_ms = tr_ms = ck_ms = None
            for _ in range(max(1, args.rounds)):
                ort_ms = fastest(ort_ms, time_ort(l, threads))
                ov_ms = fastest(ov_ms, time_openvino(l, threads))
                cd_ms = fastest(cd_ms, time_candle(candle, l["name"], threads))
                tr_ms = fastest(tr_ms, time_tract(tract, l, threads))
                ms, algo, peak = time_convkit(binary, l["name"], threads, wisdom, args.layout)
                ck_ms = fastest(ck_ms, ms)
            best_ms = min(m for m in (ort_ms, ov_ms, cd_ms, tr_ms) if m)
            rows.append({"layer": l["name"], "threads": threads, "gflop": gf, "convkit_algo": algo,
                         "convkit_ms": ck_ms, "convkit_gflops": gf / ck_ms * 1e3, "ort_ms": ort_ms,
                         "ort_gflops": gf / ort_ms * 1e3, "ratio": ort_ms / ck_ms, "peak_gflops": peak,
                         "ov_ms": ov_ms, "ov_gflops": gf / ov_ms * 1e3 if ov_ms else None,
                         "candle_ms": cd_ms, "candle_gflops": gf / cd_ms * 1e3 if cd_ms else None,
                         "tract_ms": tr_ms, "tract_gflops": gf / tr_ms * 1e3 if tr_ms else None,
                         "best_peer_gflops": gf / best_ms * 1e3, "ratio_best": best_ms / ck_ms})
            ov_txt = f"{gf / ov_ms * 1e3:7.1f}" if ov_ms else "      -"
            print(f"{threads}t {l['name']:24} convkit {gf / ck_ms * 1e3:7.1f}  onnxruntime {gf / ort_ms * 1e3:7.1f}"
                  f"  openvino {ov_txt} GFLOP/s  vs best peer {best_ms / ck_ms:.2f}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| threads | layer | convkit algo | convkit GFLOP/s | % peak | onnxruntime | openvino | candle | tract | convkit / ORT | convkit / best peer |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ov = f"{r['ov_gflops']:.1f}" if r["ov_gflops"] else "-"
        cd = f"{r['candle_gflops']:.1f}" if r.get("candle_gflops") else "-"
        tr = f"{r['tract_gflops']:.1f}" if r.get("tract_gflops") else "-"
        lines.append(f"| {r['threads']} | {r['layer']} | {r['convkit_algo']} | {r['convkit_gflops']:.1f} | "
                     f"{100 * r['convkit_gflops'] / r['peak_gflops']:.0f}% | {r['ort_gflops']:.1f} | {ov} | {cd} | {tr} | "
                     f"{r['ratio']:.2f}x | {r['ratio_best']:.2f}x |")
    for threads in sorted({r["threads"] for r in rows}):
        rs = [r for r in rows if r["threads"] == threads]
        geo = lambda k: math.exp(sum(math.log(r[k]) for r in rs) / len(rs))  # noqa: E731
        ov = f"{geo('ov_gflops'):.1f}" if all(r["ov_gflops"] for r in rs) else "-"
        cd = f"{geo('candle_gflops'):.1f}" if all(r.get("candle_gflops") for r in rs) else "-"
        tr = f"{geo('tract_gflops'):.1f}" if all(r.get("tract_gflops") for r in rs) else "-"
        lines.append(f"| {threads} | **geomean** | | {geo('convkit_gflops'):.1f} | | {geo('ort_gflops'):.1f} | {ov} | {cd} | {tr} | "
                     f"{geo('convkit_gflops') / geo('ort_gflops'):.2f}x | {geo('convkit_gflops') / geo('best_peer_gflops'):.2f}x |")
    bw = measure_bandwidth()
    lines.append("")
    lines.append(f"Copy bandwidth measured by the script: L2 {bw[0]:.0f} GB/s, DRAM {bw[1]:.0f} GB/s (read + write).")
    lines.append(f"convkit ran {args.layout.upper()} tensors; onnxruntime and OpenVINO the NCHW ONNX model.")
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    peak1 = next((r["peak_gflops"] for r in rows if r["threads"] == 1), None)
    if peak1:
        chart_gflops(rows, peak1, os.path.join(args.out, "gflops.svg"))
        chart_roofline(rows, layers, peak1, bw, os.path.join(args.out, "roofline.svg"))
    chart_scaling(rows, os.path.join(args.out, "scaling.svg"))
    print(f"charts: {args.out}/gflops.svg, roofline.svg, scaling.svg")


if __name__ == "__main__":
    main()
