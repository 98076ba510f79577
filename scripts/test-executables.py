#!/usr/bin/env python3
"""The executables of the named test targets, one per line, from the JSON messages of
`cargo test --no-run --message-format=json` on stdin (for running built tests directly).

    cargo test --workspace --no-run --message-format=json | python3 scripts/test-executables.py conv
"""
import json
import sys

names = set(sys.argv[1:])
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in names:
        print(m["executable"])
