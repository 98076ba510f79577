#!/usr/bin/env bash
# Regenerates assets/fashion-mnist-sample/: the first 4,000 training and the first 1,000 test
# images of Fashion-MNIST (with labels), in the original IDX format, gzipped reproducibly.
#
# Source: Debian's package dataset-fashion-mnist (installed here if missing).
# Usage:  bash scripts/make-sample.sh
set -euo pipefail
cd "$(dirname "$0")/.."

src=/usr/share/datasets/fashion-mnist
out=assets/fashion-mnist-sample
if [ ! -f "$src/train-images-idx3-ubyte.gz" ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
fi
mkdir -p "$out"

# take PREFIX COUNT: copy the header with its count rewritten, then COUNT records.
take() {
  local prefix=$1 count=$2
  python3 - "$src" "$out" "$prefix" "$count" <<'PY'
import gzip, struct, sys
src, out, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for kind in ("images-idx3", "labels-idx1"):
    name = f"{prefix}-{kind}-ubyte"
    data = gzip.open(f"{src}/{name}.gz").read()
    ndim = data[3]
    dims = list(struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]))
    record = 1
    for d in dims[1:]:
        record *= d
    body = data[4 + 4 * ndim: 4 + 4 * ndim + count * record]
    dims[0] = count
    with open(f"{out}/{name}", "wb") as f:
        f.write(data[:4] + struct.pack(f">{ndim}I", *dims) + body)
PY
}
take train 4000
take t10k 1000
for f in "$out"/*-ubyte; do gzip -n -9 -f "$f"; done

cat > "$out/LICENSE" <<'LIC'
The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
LIC
ls -l "$out"
