#!/usr/bin/env python3
"""Paired timing of convkit against onnxruntime in one process, call by call.

`compare.py` runs each engine for a fraction of a second in turn; on a shared host whose
interference comes in bursts of seconds, one engine's whole measurement can fall inside a
burst the other escaped. Here both engines run the same layer in alternation, in the same
process, on one thread: convkit through its C ABI (`libconvkit.so`, loaded with ctypes),
onnxruntime through its Python API on the same one-layer ONNX model (and weights) as
`compare.py` builds. A burst then slows calls of both. Each engine runs a block of
`--block` + 1 calls, the first dropped (it finds the other engine's data in the caches) and
the median of the rest kept; a pair is one block of each, the order alternating. For each
layer it prints each engine's minimum and median block time and two ratios (onnxruntime time
/ convkit time, above 1 when convkit is faster): of the minima, and the median of the
per-pair ratios. It also checks that the two engines' outputs agree.

One thread only: with two, the engines' thread pools in one process took cores from each
other (onnxruntime's workers spin after a call; convkit ran 2-4x slower right after
onnxruntime's calls, and with onnxruntime's spinning turned off onnxruntime ran slower), so
`compare.py` remains the measure for more threads.

Both timings include the call from Python: a few microseconds for the ctypes call and
more for `InferenceSession.run` (the script measures both on empty work and prints them), so
layers that take under about 0.3 ms lean towards convkit; it marks them.

Usage (inside the virtualenv that compare.py makes, after `cargo build --release`):
    target/compare-venv/bin/python tools/compare/paired.py [--layers a,b]
        [--pairs 60] [--block 5] [--lib target/release/libconvkit.so] [--algo auto] [--tune measure]
convkit's `auto` plans use the wisdom file named by CONVKIT_WISDOM when it is set, and the
tuner mode of `--tune` (default measure) otherwise.
"""

import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (build_model, the suite path)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_lib(path):
    lib = ctypes.CDLL(path)
    f32p = ctypes.POINTER(ctypes.c_float)
    lib.convkit_plan_create_json.argtypes = [ctypes.c_char_p, f32p, ctypes.c_size_t, f32p, ctypes.c_size_t,
                                             ctypes.c_char_p, ctypes.c_uint32, ctypes.c_size_t,
                                             ctypes.POINTER(ctypes.c_void_p)]
    lib.convkit_plan_run.argtypes = [ctypes.c_void_p, f32p, ctypes.c_size_t, f32p, ctypes.c_size_t, f32p,
                                     ctypes.c_size_t]
    lib.convkit_plan_output_len.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.convkit_plan_algo.argtypes = [ctypes.c_void_p]
    lib.convkit_plan_algo.restype = ctypes.c_char_p
    lib.convkit_plan_destroy.argtypes = [ctypes.c_void_p]
    lib.convkit_last_error_message.restype = ctypes.c_char_p
    lib.convkit_tuner_set_mode.argtypes = [ctypes.c_uint32, ctypes.c_uint32]
    lib.convkit_wisdom_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
    return lib


def check(lib, status, what):
    if status != 0:
        sys.exit(f"error: {what}: {lib.convkit_last_error_message().decode()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="")
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--lib", default=os.path.join(ROOT, "target", "release", "libconvkit.so"))
    ap.add_argument("--algo", default="auto")
    ap.add_argument("--tune", default="measure", choices=["heuristic", "measure", "exhaustive"])
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort

    lib = load_lib(args.lib)
    # 60 ms a candidate, as `convkit bench --tune measure` gives.
    check(lib, lib.convkit_tuner_set_mode({"heuristic": 0, "measure": 1, "exhaustive": 2}[args.tune], 60),
          "tuner mode")
    wisdom = os.environ.get("CONVKIT_WISDOM")
    if wisdom and os.path.exists(wisdom):
        check(lib, lib.convkit_wisdom_load(wisdom.encode(), None), "wisdom")
    with open(os.path.join(ROOT, "..", "shared", "bench", "layers.json")) as f:
        suite = json.load(f)["layers"]
    if args.layers:
        names = args.layers.split(",")
        unknown = [n for n in names if n not in {l["name"] for l in suite}]
        if unknown:
            sys.exit(f"error: unknown layers: {', '.join(unknown)}")
        suite = [l for l in suite if l["name"] in names]
    f32p = ctypes.POINTER(ctypes.c_float)

    # The cost of the calls themselves: ORT on a one-element Identity model, convkit on a
    # failing run (a NULL plan returns at once).
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "id",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ident = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                                                   ir_version=9).SerializeToString(), so,
                                 providers=["CPUExecutionProvider"])
    one = np.zeros(1, np.float32)
    ov_ort, ov_ck = [], []
    for _ in range(2000):
        t = time.perf_counter()
        ident.run(None, {"X": one})
        ov_ort.append(time.perf_counter() - t)
        t = time.perf_counter()
        lib.convkit_plan_run(None, None, 0, None, 0, None, 0)
        ov_ck.append(time.perf_counter() - t)
    print(f"call overhead (median): onnxruntime {statistics.median(ov_ort) * 1e6:.1f} us, "
          f"convkit ctypes {statistics.median(ov_ck) * 1e6:.1f} us")
    print(f"1 thread, {args.pairs} alternating pairs of {args.block}-call blocks a layer; ratio = onnxruntime time / convkit time")
    print(f"{'layer':28s} {'algo':15s} {'ORT min':>8s} {'ORT med':>8s} {'ck min':>8s} {'ck med':>8s} "
          f"{'min ratio':>9s} {'pair ratio':>10s}")
    min_ratios, pair_ratios = [], []
    for l in suite:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(compare.build_model(l), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal(l["input"]).astype(np.float32)
        # The weights and bias of compare.build_model's model: the same generator and draws.
        rng = np.random.default_rng(7)
        cin_g = l["input"][1] // l["groups"]
        w = (rng.standard_normal([l["out_channels"], cin_g] + l["kernel"])
             / math.sqrt(cin_g * math.prod(l["kernel"]))).astype(np.float32).ravel()
        b = (0.1 * rng.standard_normal([l["out_channels"]])).astype(np.float32)
        spec = {k: v for k, v in l.items() if k != "name"}
        plan = ctypes.c_void_p()
        bias = b.ctypes.data_as(f32p) if l.get("bias", True) else None
        check(lib, lib.convkit_plan_create_json(json.dumps(spec).encode(), w.ctypes.data_as(f32p), w.size, bias,
                                                b.size if bias else 0, args.algo.encode(), 0, 1,
                                                ctypes.byref(plan)), f"plan for {l['name']}")
        n_out = ctypes.c_size_t()
        check(lib, lib.convkit_plan_output_len(plan, ctypes.byref(n_out)), "output length")
        y = np.empty(n_out.value, np.float32)
        xp, yp = x.ctypes.data_as(f32p), y.ctypes.data_as(f32p)
        algo = lib.convkit_plan_algo(plan).decode()
        # Agreement first: the two engines compute the same layer.
        ref = sess.run(None, {"X": x})[0].ravel()
        check(lib, lib.convkit_plan_run(plan, xp, x.size, None, 0, yp, y.size), "run")
        # Largest difference over the largest output (SPEC's tolerance scales by the larger
        # pre-activation magnitude; this is the stricter measure): 1e-3 is Winograd's bound.
        worst = (float(np.max(np.abs(ref - y)) / max(float(np.max(np.abs(ref))), 1e-30))
                 if ref.size == y.size else float("inf"))
        for _ in range(3):
            sess.run(None, {"X": x})
            lib.convkit_plan_run(plan, xp, x.size, None, 0, yp, y.size)
        # Blocks of `--block` calls of one engine, then of the other: the first call of a block
        # finds the other engine's data in the caches and is dropped, the rest run warm, as
        # in a network that runs the layer again. A block lasts milliseconds, bursts seconds.
        t_ort, t_ck = [], []
        for i in range(args.pairs):
            for engine in ((0, 1) if i % 2 == 0 else (1, 0)):
                times = []
                for _ in range(args.block + 1):
                    t = time.perf_counter()
                    if engine == 0:
                        sess.run(None, {"X": x})
                    else:
                        lib.convkit_plan_run(plan, xp, x.size, None, 0, yp, y.size)
                    times.append((time.perf_counter() - t) * 1e3)
                (t_ort if engine == 0 else t_ck).append(statistics.median(times[1:]))
        lib.convkit_plan_destroy(plan)
        min_ratio = min(t_ort) / min(t_ck)
        pair_ratio = statistics.median(a / c for a, c in zip(t_ort, t_ck))
        min_ratios.append(min_ratio)
        pair_ratios.append(pair_ratio)
        short = " (short: call overhead weighs)" if min(t_ck) < 0.3 else ""
        bad = f"  MISMATCH: largest difference {worst:.1e} of the largest output" if worst > 1e-3 else ""
        print(f"{l['name']:28s} {algo:15s} {min(t_ort):8.3f} {statistics.median(t_ort):8.3f} {min(t_ck):8.3f} "
              f"{statistics.median(t_ck):8.3f} {min_ratio:9.2f} {pair_ratio:10.2f}{short}{bad}", flush=True)
    if min_ratios:
        gm = lambda v: math.exp(sum(math.log(r) for r in v) / len(v))  # noqa: E731
        print(f"{'geomean':28s} {'':15s} {'':8s} {'':8s} {'':8s} {'':8s} {gm(min_ratios):9.2f} {gm(pair_ratios):10.2f}")


if __name__ == "__main__":
    main()
