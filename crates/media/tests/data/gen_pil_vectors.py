"""Regenerates tests/data/pil_vectors.json and the images next to it with Pillow.

Run with Pillow 13.0.0 (the version the NEO fixtures were made with):
    python gen_pil_vectors.py
Hashes are FNV-1a 64 over the raw RGB bytes (row-major, 3 bytes per pixel).
"""
import io, json, os, random
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(1234)


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def noise_rgb(w, h):
    px = []
    for y in range(h):
        for x in range(w):
            if (x // 7 + y // 5) % 3 == 0:  # hard edges -> exercises clipping
                px.append((255 if (x + y) % 2 else 0, 0, 255))
            else:
                px.append(((x * 3 + rng.randrange(40)) % 256, (y * 5 + rng.randrange(60)) % 256, rng.randrange(256)))
    im = Image.new("RGB", (w, h))
    im.putdata(px)
    return im


def load_native_rgb(path):
    # Exactly the conversion of VLMEvalKit's load_image_native (NEO).
    import numpy as np
    image = Image.open(path)
    if image.mode == "RGBA":
        a = np.array(image)
        if (a[:, :, 3] == 0).any() and (a[:, :, 3] > 0).any():
            bg = Image.new("RGB", image.size, (255, 255, 255))
            bg.paste(image, mask=image.split()[3])
            return bg.convert("RGB"), image.mode
        return image.convert("RGB"), image.mode
    return image.convert("RGB"), image.mode


out = {"resize": [], "decode": []}

src = noise_rgb(97, 61)
src.save(os.path.join(HERE, "noise_97x61.png"))
# (150, 40), (98, 60), (97, 33), (300, 20): width grows, height shrinks -> Pillow 13 runs the
# vertical pass first.
for (w, h) in [(40, 25), (150, 40), (98, 60), (97, 33), (300, 20), (97, 120), (30, 61), (1, 1), (5, 200), (96, 60), (33, 17), (200, 130)]:
    r = src.resize((w, h))
    out["resize"].append({"src": "noise_97x61.png", "filter": "bicubic", "w": w, "h": h, "fnv1a64": fnv1a64(r.tobytes())})
r = src.resize((194, 122), Image.BILINEAR)
out["resize"].append({"src": "noise_97x61.png", "filter": "bilinear", "w": 194, "h": 122, "fnv1a64": fnv1a64(r.tobytes())})
r = src.resize((41, 23), Image.BILINEAR)
out["resize"].append({"src": "noise_97x61.png", "filter": "bilinear", "w": 41, "h": 23, "fnv1a64": fnv1a64(r.tobytes())})

def smooth_rgb(w, h):
    # Gradients with hard-edged blocks: compresses well, still exercises clipping.
    im = Image.new("RGB", (w, h))
    im.putdata([
        (255, 255, 255) if ((x // 37) + (y // 23)) % 5 == 0 else
        (0, 0, 0) if ((x // 41) + (y // 19)) % 7 == 0 else
        ((x * 255) // (w - 1), (y * 255) // (h - 1), ((x ^ y) * 3) % 256)
        for y in range(h) for x in range(w)
    ])
    return im


big = smooth_rgb(640, 400)
big.save(os.path.join(HERE, "smooth_640x400.png"))
for (w, h) in [(288, 192), (352, 224), (640, 192), (128, 400), (672, 224)]:
    r = big.resize((w, h))
    out["resize"].append({"src": "smooth_640x400.png", "filter": "bicubic", "w": w, "h": h, "fnv1a64": fnv1a64(r.tobytes())})

# Decode / mode conversion vectors (small images, expected RGB stored raw as hex).
W, H = 12, 9
rgba = Image.new("RGBA", (W, H))
rgba.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256), [0, 255, rng.randrange(256)][rng.randrange(3)]) for _ in range(W * H)])
files = {}
rgba.save(os.path.join(HERE, "rgba.png")); files["rgba.png"] = None
opaque = rgba.copy(); opaque.putalpha(200)
opaque.save(os.path.join(HERE, "rgba_no_zero_alpha.png")); files["rgba_no_zero_alpha.png"] = None
la = rgba.convert("LA"); la.save(os.path.join(HERE, "la.png")); files["la.png"] = None
pal = rgba.convert("RGB").quantize(16)
pal.save(os.path.join(HERE, "palette_trns.png"), transparency=3); files["palette_trns.png"] = None
pal.save(os.path.join(HERE, "first_frame.gif"), transparency=3); files["first_frame.gif"] = None
rgba.save(os.path.join(HERE, "rgba.webp"), lossless=True); files["rgba.webp"] = None
rgba.convert("RGB").save(os.path.join(HERE, "rgb.bmp")); files["rgb.bmp"] = None
small = src.crop((0, 0, 40, 24))
small.save(os.path.join(HERE, "noise.jpg"), quality=90); files["noise.jpg"] = "approx"
small.save(os.path.join(HERE, "noise_420.jpg"), quality=75, subsampling=2); files["noise_420.jpg"] = "approx"
small.save(os.path.join(HERE, "noise_lossy.webp"), quality=80); files["noise_lossy.webp"] = "approx"
gray = small.convert("L"); gray.save(os.path.join(HERE, "gray.png")); files["gray.png"] = None
# 16-bit gray: values 0..1000 (PIL clamps to 255 on convert("RGB")).
g16 = Image.new("I;16", (W, H)); g16.putdata([rng.randrange(1000) for _ in range(W * H)])
g16.save(os.path.join(HERE, "gray16.png")); files["gray16.png"] = None

for name, kind in files.items():
    rgb, mode = load_native_rgb(os.path.join(HERE, name))
    out["decode"].append({"file": name, "pil_mode": mode, "w": rgb.width, "h": rgb.height,
                          "exact": kind is None, "rgb_hex": rgb.tobytes().hex()})

with open(os.path.join(HERE, "pil_vectors.json"), "w") as f:
    json.dump(out, f, indent=1)
print("ok", len(out["resize"]), len(out["decode"]))
