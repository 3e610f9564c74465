#!/usr/bin/env python3
"""Where a model misses on `pixlm gen-shapes` evaluation sets, by what the scenes hold.

Each SET is a directory written by `pixlm gen-shapes` (questions.jsonl and scenes.jsonl); each
FAILURES file is the output of `pixlm eval --failures SET` for it. Prints accuracy of `left_of`
by the horizontal distance between the two centres (as a fraction of the width), of the
counting kinds by the true count, and of every question by the image's shorter side and its
aspect ratio. Standard library only.

    for s in h1 h2 h3; do pixlm eval --failures /tmp/ev/$s > /tmp/fail_$s.txt; done
    python3 scripts/eval_breakdown.py /tmp/ev/h1 /tmp/fail_h1.txt /tmp/ev/h2 /tmp/fail_h2.txt
"""

import collections
import json
import re
import sys


def load(set_dir, failures):
    scenes = {}
    with open(f"{set_dir}/scenes.jsonl") as f:
        for line in f:
            d = json.loads(line)
            scenes[d["image"]] = d["scene"]
    wrong = set()
    with open(failures) as f:
        for line in f:
            m = re.match(r"WRONG (\S+) \| (.*) \| expected", line)
            if m:
                wrong.add((m.group(1), m.group(2)))
    rows = []
    with open(f"{set_dir}/questions.jsonl") as f:
        for line in f:
            q = json.loads(line)
            rows.append((q, scenes[q["image"]], (q["image"], q["question"]) not in wrong))
    return rows


def table(title, rows, key):
    bins = collections.defaultdict(lambda: [0, 0])
    for q, sc, ok in rows:
        k = key(q, sc)
        if k is not None:
            bins[k][0] += 1
            bins[k][1] += ok
    print(title)
    for k in sorted(bins):
        n, good = bins[k]
        print(f"  {k}: {good}/{n} = {100 * good / n:.1f}%")


def left_of_gap(q, sc):
    if q["kind"] != "left_of":
        return None
    m = re.match(r"Is the (\w+) (\w+) left of the (\w+) (\w+)\?", q["question"])
    c1, s1, c2, s2 = m.groups()

    def find(c, s):
        return next(o for o in sc["objects"] if o["color"] == c and o["shape"] == s)

    dx = abs(find(c1, s1)["center"][0] - find(c2, s2)["center"][0]) / sc["width"]
    lo = min(int(dx * 20), 8) / 20
    return f"{lo:.2f}-{lo + 0.05:.2f}" if lo < 0.4 else "0.40+"


def main():
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit(__doc__)
    rows = []
    for i in range(0, len(args), 2):
        rows += load(args[i], args[i + 1])
    print(f"{len(rows)} questions, {100 * sum(ok for *_, ok in rows) / len(rows):.1f}% right")
    table("left_of by the centres' horizontal distance / width", rows, left_of_gap)
    table(
        "count_all by the number of objects",
        rows,
        lambda q, sc: len(sc["objects"]) if q["kind"] == "count_all" else None,
    )
    table(
        "count_shape by the answer",
        rows,
        lambda q, sc: int(q["answer"]) if q["kind"] == "count_shape" else None,
    )
    table(
        "every kind by the shorter side (pixels, in steps of 64)",
        rows,
        lambda q, sc: min(sc["width"], sc["height"]) // 64 * 64,
    )
    table(
        "every kind by the aspect ratio (longer / shorter side, rounded)",
        rows,
        lambda q, sc: round(max(sc["width"], sc["height"]) / min(sc["width"], sc["height"])),
    )


if __name__ == "__main__":
    main()
