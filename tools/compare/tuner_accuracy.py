#!/usr/bin/env python3
"""The autotuner's accuracy on the built-in suite (issue 6's table).

1. `convkit tune` fills a fresh wisdom file (the `Measure` mode's choices);
2. `convkit bench --tune heuristic` with another fresh file gives the heuristic's choices;
3. `convkit bench --algo all` times every algorithm of each layer side by side, in rounds
   (A B C A B C ...), so the "fastest forced" and the chosen algorithm's time come from the
   same rounds.

Prints a markdown table: per layer the fastest forced algorithm and its median, each choice's
median over the fastest, and the counts against the targets (measured within 5% on >= 90% of
the layers, heuristic within 15% on >= 80%).

Usage: python3 tools/compare/tuner_accuracy.py [--threads 1] [--out DIR]
"""
import argparse
import json
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def convkit(binary, *args):
    out = subprocess.run([binary, *args, "--format", "json"], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)["results"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "tuner-accuracy"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    subprocess.check_call(["cargo", "build", "--release", "-q", "--bin", "convkit"], cwd=ROOT)
    binary = os.path.join(ROOT, "target", "release", "convkit")
    measured_w = os.path.join(args.out, "measured.json")
    heuristic_w = os.path.join(args.out, "heuristic.json")
    for w in (measured_w, heuristic_w):
        if os.path.exists(w):
            os.unlink(w)
    t = time.perf_counter()
    subprocess.run([binary, "tune", "--threads", args.threads, "--wisdom", measured_w], check=True,
                   capture_output=True)
    tune_s = time.perf_counter() - t
    # Both runs below plan from their wisdom files (measuring nothing new) with --reps 1: only
    # the choices are read from them.
    measured = {r["layer"]: r["algo"] for r in
                convkit(binary, "bench", "--threads", args.threads, "--wisdom", measured_w, "--reps", "1")}
    heuristic = {r["layer"]: r["algo"] for r in
                 convkit(binary, "bench", "--threads", args.threads, "--tune", "heuristic", "--wisdom",
                         heuristic_w, "--reps", "1")}
    forced = {}
    for r in convkit(binary, "bench", "--algo", "all", "--threads", args.threads, "--wisdom",
                     os.path.join(args.out, "forced.json")):
        forced.setdefault(r["layer"], {})[r["algo"]] = r["median_ms"]
    lines = ["| layer | fastest forced (median ms) | measured choice: its time / fastest | heuristic choice: same |",
             "|---|---|---:|---:|"]
    within5 = within15 = 0
    for layer, times in forced.items():
        best_algo = min(times, key=times.get)
        best = times[best_algo]
        m, h = measured[layer], heuristic[layer]
        rm, rh = times[m] / best, times[h] / best
        within5 += rm <= 1.05
        within15 += rh <= 1.15
        lines.append(f"| {layer} | {best_algo} {best:.3f} | {m} {rm:.2f}x | {h} {rh:.2f}x |")
    n = len(forced)
    lines.append("")
    lines.append(f"Measured choice within 5% of the fastest: {within5} of {n} (target >= 90%); "
                 f"heuristic within 15%: {within15} of {n} (target >= 80%). "
                 f"Tuning the suite: {tune_s:.1f} s on {args.threads} thread(s).")
    text = "\n".join(lines)
    with open(os.path.join(args.out, "accuracy.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
