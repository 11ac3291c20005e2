#!/usr/bin/env python3
"""Side-by-side comparison of convkit with onnxruntime (CPU, MLAS) and OpenVINO (CPU plugin, oneDNN) on the layer suite.

Layers alternate between the engines in one run, so drift of the shared machine hits both
alike. For each layer and thread count: onnxruntime runs a one-layer ONNX model (Conv plus the
layer's activation and pool, graph optimizations on, so MLAS fuses what it can), OpenVINO
runs the same model (f32 precision hint, one stream, latency hint), then `convkit bench
--layers NAME` (auto choice, tuned) runs the same layer. All report the median of repeated
runs after warm-up; GFLOP/s use the suite's FLOP count. OpenVINO is skipped (a "-" column)
when it cannot be installed.

Usage (creates its own virtualenv with numpy, onnx, onnxruntime and openvino on first use):
    python3 tools/compare/compare.py [--layers a,b] [--threads 1,2] [--out DIR]
Writes DIR/compare.md (a markdown table with ratios and a geomean row) and DIR/compare.json.
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
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


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


def time_convkit(binary, name, threads):
    out = subprocess.run([binary, "bench", "--layers", name, "--threads", str(threads), "--format", "json"],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out)["results"][0]
    return r["median_ms"], r["algo"], json.loads(out)["machine"]["peak_gflops"]


def main():
    ensure_venv()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "compare"))
    args = ap.parse_args()
    with open(SUITE) as f:
        layers = json.load(f)["layers"]
    if args.layers:
        wanted = args.layers.split(",")
        layers = [l for l in layers if l["name"] in wanted]
    subprocess.check_call(["cargo", "build", "--release", "-q", "--bin", "convkit"], cwd=ROOT)
    binary = os.path.join(ROOT, "target", "release", "convkit")
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for l in layers:
            gf = flops(l) / 1e9
            ort_ms = time_ort(l, threads)
            ov_ms = time_openvino(l, threads)
            ck_ms, algo, peak = time_convkit(binary, l["name"], threads)
            best_ms = min(ort_ms, ov_ms) if ov_ms else ort_ms
            rows.append({"layer": l["name"], "threads": threads, "gflop": gf, "convkit_algo": algo,
                         "convkit_ms": ck_ms, "convkit_gflops": gf / ck_ms * 1e3, "ort_ms": ort_ms,
                         "ort_gflops": gf / ort_ms * 1e3, "ratio": ort_ms / ck_ms, "peak_gflops": peak,
                         "ov_ms": ov_ms, "ov_gflops": gf / ov_ms * 1e3 if ov_ms else None,
                         "best_peer_gflops": gf / best_ms * 1e3, "ratio_best": best_ms / ck_ms})
            ov_txt = f"{gf / ov_ms * 1e3:7.1f}" if ov_ms else "      -"
            print(f"{threads}t {l['name']:24} convkit {gf / ck_ms * 1e3:7.1f}  onnxruntime {gf / ort_ms * 1e3:7.1f}"
                  f"  openvino {ov_txt} GFLOP/s  vs best peer {best_ms / ck_ms:.2f}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| threads | layer | convkit algo | convkit GFLOP/s | % peak | onnxruntime | openvino | convkit / ORT | convkit / best peer |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ov = f"{r['ov_gflops']:.1f}" if r["ov_gflops"] else "-"
        lines.append(f"| {r['threads']} | {r['layer']} | {r['convkit_algo']} | {r['convkit_gflops']:.1f} | "
                     f"{100 * r['convkit_gflops'] / r['peak_gflops']:.0f}% | {r['ort_gflops']:.1f} | {ov} | "
                     f"{r['ratio']:.2f}x | {r['ratio_best']:.2f}x |")
    for threads in sorted({r["threads"] for r in rows}):
        rs = [r for r in rows if r["threads"] == threads]
        geo = lambda k: math.exp(sum(math.log(r[k]) for r in rs) / len(rs))  # noqa: E731
        ov = f"{geo('ov_gflops'):.1f}" if all(r["ov_gflops"] for r in rs) else "-"
        lines.append(f"| {threads} | **geomean** | | {geo('convkit_gflops'):.1f} | | {geo('ort_gflops'):.1f} | {ov} | "
                     f"{geo('convkit_gflops') / geo('ort_gflops'):.2f}x | {geo('convkit_gflops') / geo('best_peer_gflops'):.2f}x |")
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
