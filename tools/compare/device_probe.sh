#!/bin/bash
# The device probe of session 12 (run from the repository root on the 16-core machine, with
# a release build carried in target/release): Winograd tiles a block, the helpers' spin time and
# band rows at 8 and 16 threads, depthwise at 4-16. Its output: results/device16/probe.log.
B=target/release/convkit
python3 -c "import numpy as np; np.ones(6<<28, np.float32).sum()"
W="vgg16.conv1_2,resnet50.res2.3x3,vgg16.conv2_2,resnet50.res3.3x3.b8,resnet50.res3.3x3"
f() { "$@" 2>/dev/null | awk -F, 'NR>1 {printf "%-22s %-14s t%s %8.3f ms %7.1f GF\n", $1, $2, $5, $6, $8}'; }
for T in 16 8; do
  for tiles in def 128 512 2048; do
    echo "== T=$T tiles=$tiles"
    if [ $tiles = def ]; then f $B bench --layers $W --algo winograd_f6x3 --threads $T --format csv
    else CONVKIT_WINO_TILES=$tiles f $B bench --layers $W --algo winograd_f6x3 --threads $T --format csv; fi
  done
done
S="mobilenetv2.dw112,googlenet.inc3a.5x5,resnet50.res2.1x1b,resnet50.res4.1x1,vgg16.conv1_2,resnet50.res2.3x3"
for sp in 200 2000 0; do echo "== spin $sp direct_oc/auto T=16"; CONVKIT_SPIN_US=$sp f $B bench --layers $S --tune heuristic --threads 16 --format csv; done
f $B bench --layers vgg16.conv1_2 --algo direct_oc --threads 16 --format csv
for br in 28 56 224; do echo "== band rows $br conv1_2 direct_oc T=16"; f $B bench --layers vgg16.conv1_2 --algo direct_oc --band-rows $br --threads 16 --format csv; done
for T in 16 8 4; do echo "== dw112 T=$T"; f $B bench --layers mobilenetv2.dw112,mobilenetv2.dw7 --algo depthwise --threads $T --format csv; done
