#!/usr/bin/env python3
"""An evaluation set for the shapes task drawn by a second renderer (Pillow), written from
`../shared/specs/shapes-task.md` alone, to check the shipped model on images pixlm's own
generator did not make (the issue's checks use "another renderer").

It differs from `pixlm gen-shapes` wherever the spec leaves room: anti-aliasing by drawing at
4x and downsampling with Lanczos (not coverage sampling), triangles whose base and height are
drawn independently, Pillow's JPEG encoder, its own question sampling.

    python3 -m venv /tmp/pilvenv && /tmp/pilvenv/bin/pip install pillow
    /tmp/pilvenv/bin/python scripts/render_shapes_pil.py /tmp/ev/pil --images 300 --seed 1
    cargo run --release -- eval /tmp/ev/pil
"""

import argparse
import json
import os
import random

from PIL import Image, ImageChops, ImageDraw

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
SHAPES = ["circle", "square", "triangle"]
SS = 4  # supersampling factor for anti-aliased drawing


def place_objects(rng, w, h):
    """1-4 non-overlapping objects (bounding boxes apart), each fully inside the canvas."""
    short = min(w, h)
    lo, hi = short / 6, short / 3
    n = rng.randint(1, 4)
    objs = []
    for _ in range(n):
        for _attempt in range(200):
            shape = rng.choice(SHAPES)
            bw = rng.uniform(lo, hi)
            bh = bw if shape != "triangle" else rng.uniform(lo, hi)
            x0 = rng.uniform(1, w - bw - 1)
            y0 = rng.uniform(1, h - bh - 1)
            box = (x0, y0, x0 + bw, y0 + bh)
            gap = 2
            if all(
                box[2] + gap < o["box"][0]
                or o["box"][2] + gap < box[0]
                or box[3] + gap < o["box"][1]
                or o["box"][3] + gap < box[1]
                for o in objs
            ):
                name = rng.choice(list(COLORS))
                rgb = tuple(
                    max(0, min(255, c + rng.randint(-20, 20))) for c in COLORS[name]
                )
                objs.append(
                    {
                        "shape": shape,
                        "color": name,
                        "rgb": rgb,
                        "box": box,
                        "inverted": rng.random() < 0.5,
                    }
                )
                break
    return objs


def draw(rng, w, h, objs, aa):
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    s = SS if aa else 1
    img = Image.new("RGB", (w * s, h * s), bg)
    d = ImageDraw.Draw(img)
    for o in objs:
        x0, y0, x1, y1 = (v * s for v in o["box"])
        if o["shape"] == "circle":
            d.ellipse((x0, y0, x1, y1), fill=o["rgb"])
        elif o["shape"] == "square":
            d.rectangle((x0, y0, x1, y1), fill=o["rgb"])
        else:
            xm = (x0 + x1) / 2
            pts = [(x0, y0), (x1, y0), (xm, y1)] if o["inverted"] else [(xm, y0), (x1, y1), (x0, y1)]
            d.polygon(pts, fill=o["rgb"])
    if aa:
        img = img.resize((w, h), Image.LANCZOS)
    amp = rng.choice([0, 0, rng.randint(1, 8)])
    if amp:
        noise = Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3))
        noise = noise.point(lambda v: v % (2 * amp + 1))
        img = ImageChops.add(img, noise, offset=-amp)
    return img


def questions(rng, objs, w, k):
    shapes = [o["shape"] for o in objs]
    colors = [o["color"] for o in objs]
    cands = []
    for sh in SHAPES:
        if shapes.count(sh) == 1:
            o = objs[shapes.index(sh)]
            cands.append(("color", f"What color is the {sh}?", o["color"]))
        cands.append(("count_shape", f"How many {sh}s are there?", str(shapes.count(sh))))
    for c in set(colors):
        if colors.count(c) == 1:
            o = objs[colors.index(c)]
            cands.append(("shape", f"What shape is the {c} object?", o["shape"]))
    cands.append(("count_all", "How many objects are there?", str(len(objs))))
    # exists: half about an object in the scene, half about a pair that is not there.
    present = {(o["color"], o["shape"]) for o in objs}
    if rng.random() < 0.5:
        c, sh = rng.choice(sorted(present))
    else:
        absent = [(c, sh) for c in COLORS for sh in SHAPES if (c, sh) not in present]
        c, sh = rng.choice(absent)
    cands.append(("exists", f"Is there a {c} {sh}?", "yes" if (c, sh) in present else "no"))
    pairs = [(o["color"], o["shape"]) for o in objs]
    unique = [o for o in objs if pairs.count((o["color"], o["shape"])) == 1]
    lefts = []
    for a in unique:
        for b in unique:
            ca = (a["box"][0] + a["box"][2]) / 2
            cb = (b["box"][0] + b["box"][2]) / 2
            if a is not b and abs(ca - cb) >= w / 10:
                q = f"Is the {a['color']} {a['shape']} left of the {b['color']} {b['shape']}?"
                lefts.append(("left_of", q, "yes" if ca < cb else "no"))
    if lefts:
        cands.append(rng.choice(lefts))
    # One question per kind at most, k of the kinds this scene allows.
    by_kind = {}
    for kind, q, a in cands:
        by_kind.setdefault(kind, []).append((kind, q, a))
    kinds = rng.sample(sorted(by_kind), min(k, len(by_kind)))
    return [rng.choice(by_kind[kind]) for kind in kinds]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--per-image", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    n_q = 0
    with open(os.path.join(args.out, "questions.jsonl"), "w") as f:
        for i in range(args.images):
            w, h = rng.randint(64, 512), rng.randint(64, 512)
            objs = place_objects(rng, w, h)
            img = draw(rng, w, h, objs, aa=rng.random() < 0.5)
            if rng.random() < 0.5:
                name = f"images/{i:05d}.png"
                img.save(os.path.join(args.out, name))
            else:
                name = f"images/{i:05d}.jpg"
                img.save(os.path.join(args.out, name), quality=rng.randint(70, 100))
            for kind, q, a in questions(rng, objs, w, args.per_image):
                f.write(json.dumps({"image": name, "question": q, "answer": a, "kind": kind}) + "\n")
                n_q += 1
    print(f"{args.images} images, {n_q} questions in {args.out}")


if __name__ == "__main__":
    main()
