#!/usr/bin/env bash
# Builds the static and dynamic libraries, checks that include/convkit.h declares every
# exported function and status of src/capi.rs, and compiles and runs tests/c/main.c against
# both libraries with -Wall -Wextra -Werror (and under valgrind when it is installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p convkit
for f in $(grep -o 'extern "C" fn [a-z_]*' src/capi.rs | awk '{print $4}'); do
  grep -q "$f(" include/convkit.h || { echo "header is stale: $f missing from include/convkit.h"; exit 1; }
done
for v in $(sed -n '/pub enum ConvkitStatus/,/^}/p' src/capi.rs | grep -o '^    [A-Za-z]* = [0-9]*' | awk '{print $1"="$3}'); do
  name=${v%=*}; num=${v#*=}
  grep -q "ConvkitStatus_${name} = ${num}" include/convkit.h || { echo "header is stale: status $name = $num"; exit 1; }
done
out=target/ctest; mkdir -p $out
gcc -std=c11 -Wall -Wextra -Werror -Iinclude tests/c/main.c target/release/libconvkit.a -lpthread -ldl -lm -o $out/static
gcc -std=c11 -Wall -Wextra -Werror -Iinclude tests/c/main.c -Ltarget/release -lconvkit -lm -Wl,-rpath,"$PWD/target/release" -o $out/dynamic
echo "C test, static library:"; $out/static
echo "C test, dynamic library:"; $out/dynamic
if command -v valgrind >/dev/null 2>&1; then
  isa=portable; grep -qw avx2 /proc/cpuinfo && isa=avx2   # valgrind has no AVX-512
  echo "C test under valgrind ($isa):"; CONVKIT_ISA=$isa valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite $out/static
fi
