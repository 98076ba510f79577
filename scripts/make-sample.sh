#!/usr/bin/env bash
# Regenerates assets/fashion-mnist-sample/: the first 4,000 training and the first 1,000 test
# images of Fashion-MNIST with their labels, in the original IDX format, gzipped reproducibly
# (`gzip -n -9`: no name or time stamp), plus LICENSE (MIT, Zalando SE 2017) and README.md.
#
# Source: Debian's package dataset-fashion-mnist, which installs
#   /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
# and the licence in /usr/share/doc/dataset-fashion-mnist/copyright.
# Override the source folder with FASHION_MNIST_DIR=/path/to/idx/files.
#
# Usage:  bash scripts/make-sample.sh
# Needs bash, python3 and gzip. Idempotent: a second run rewrites byte-identical files.
set -euo pipefail
cd "$(dirname "$0")/.."

src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
copyright=/usr/share/doc/dataset-fashion-mnist/copyright
out=assets/fashion-mnist-sample
for f in {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz; do
  if [ ! -f "$src/$f" ]; then
    echo "error: $src/$f not found; install Debian's dataset-fashion-mnist" \
      "(apt-get install dataset-fashion-mnist) or set FASHION_MNIST_DIR" >&2
    exit 1
  fi
done
mkdir -p "$out"

# take PREFIX COUNT: for images and labels, the header with its count rewritten, then the
# first COUNT records. Fails if the source holds fewer.
take() {
  python3 - "$src" "$out" "$1" "$2" <<'PY'
import gzip, struct, sys
src, out, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for kind in ("images-idx3", "labels-idx1"):
    name = f"{prefix}-{kind}-ubyte"
    data = gzip.open(f"{src}/{name}.gz").read()
    ndim = data[3]
    dims = list(struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]))
    if dims[0] < count:
        sys.exit(f"{src}/{name}.gz holds {dims[0]} records, fewer than {count}")
    record = 1
    for d in dims[1:]:
        record *= d
    start = 4 + 4 * ndim
    dims[0] = count
    with open(f"{out}/{name}", "wb") as f:
        f.write(data[:4] + struct.pack(f">{ndim}I", *dims) + data[start:start + count * record])
PY
}
take train 4000
take t10k 1000
for f in "$out"/*-ubyte; do gzip -n -9 -f "$f"; done

# LICENSE: the Expat (MIT) text from Debian's machine-readable copyright file when present,
# else the standard MIT text; the notice is upstream's (github.com/zalandoresearch/fashion-mnist).
{
  printf 'The MIT License (MIT)\n\nCopyright (c) 2017 Zalando SE, https://tech.zalando.com\n\n'
  if [ -f "$copyright" ]; then
    # The paragraph after "License: Expat" with no value on the line: one-space indent,
    # " ." for blank lines (Debian copyright format 1.0).
    awk '/^License: Expat[[:space:]]*$/ { on = 1; next }
         on && /^([^ ]|$)/ { on = 0 }
         on { sub(/^ /, ""); sub(/[[:space:]]+$/, ""); if ($0 == ".") $0 = ""; print }' \
      "$copyright"
  else
    cat <<'LIC'
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
  fi
} > "$out/LICENSE"
if ! grep -q 'Permission is hereby granted' "$out/LICENSE"; then
  echo "error: could not extract the licence text from $copyright" >&2
  exit 1
fi

cat > "$out/README.md" <<'MD'
# Fashion-MNIST sample

The first 4,000 training images and the first 1,000 test images of
[Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist) (Xiao, Rasul, Vollgraf 2017,
<https://arxiv.org/abs/1708.07747>), with their labels, in the dataset's own IDX format
(gzipped). 28×28 grayscale, 10 classes: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal,
Shirt, Sneaker, Bag, Ankle boot.

It lets `simclr pretrain`, the tests and the examples run with no download. Fashion-MNIST is
MIT-licensed, © 2017 Zalando SE (see `LICENSE`).

Regenerate with `bash scripts/make-sample.sh`, which cuts it from Debian's
`dataset-fashion-mnist` package (`/usr/share/datasets/fashion-mnist/`) and gzips with
`gzip -n -9`, so the output is byte-for-byte reproducible.
MD
ls -l "$out"
