"""Latency of `pixlm serve`'s caches (stdlib only).

Usage: python3 scripts/bench_cache.py --url http://127.0.0.1:8080 --image examples/shapes.png
           [--repeats 20] [--synthetic-size N]
Start the server with its response cache on (the default). Prints:
  * response cache: the time of a deterministic request the first time (computed) and the
    median of --repeats identical requests (answered from the cache, header x-pixlm-cache);
  * second turn: the time to first token of a chat's first turn about the image, and of its
    second turn (the first turn, its answer and a new question, image included again), each
    the median of --repeats, with their ratio (issue 4's target: at most 0.15).
"""

import argparse
import base64
import http.client
import json
import statistics
import struct
import time
import urllib.parse
import zlib


def synthetic_png(n):
    """An n x n RGB PNG: a light background and three flat rectangles (for image-token
    budgets larger than examples/shapes.png gives: 512 -> 256 NEO image tokens)."""
    rows = []
    boxes = [((0.1, 0.1, 0.4, 0.35), (220, 30, 30)), ((0.5, 0.2, 0.85, 0.5), (30, 60, 220)),
             ((0.3, 0.6, 0.6, 0.9), (30, 160, 50))]
    for y in range(n):
        row = bytearray([0])
        for x in range(n):
            c = (236, 236, 230)
            for (x0, y0, x1, y1), rgb in boxes:
                if x0 * n <= x < x1 * n and y0 * n <= y < y1 * n:
                    c = rgb
            row.extend(c)
        rows.append(bytes(row))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", n, n, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def post(url, body):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    r = conn.getresponse()
    if not body.get("stream"):
        data = r.read()
        dt = time.perf_counter() - t0
        assert r.status == 200, data
        return dt, json.loads(data), r.getheader("x-pixlm-cache")
    assert r.status == 200, r.read()
    ttft, text = None, ""
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        v = json.loads(line[6:])
        if v["choices"] and v["choices"][0]["delta"].get("content"):
            if ttft is None:
                ttft = time.perf_counter() - t0
            text += v["choices"][0]["delta"]["content"]
    return ttft, text, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--image", default="examples/shapes.png")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--synthetic-size", type=int, default=0,
                    help="send a generated N x N PNG instead of --image")
    a = ap.parse_args()
    if a.synthetic_size:
        png = synthetic_png(a.synthetic_size)
    else:
        with open(a.image, "rb") as f:
            png = f.read()
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    image = {"type": "image_url", "image_url": {"url": url}}

    # Response cache: one computed answer, then identical requests.
    body = {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "Describe the image."}]}],
            "max_tokens": 32, "temperature": 0, "seed": int(time.time())}
    first, v, hdr = post(a.url, body)
    assert hdr is None, "the first request should be computed (restart the server?)"
    hits = []
    for _ in range(a.repeats):
        dt, w, hdr = post(a.url, body)
        assert hdr == "hit", "not served from the response cache (is it on?)"
        assert w["choices"][0]["message"] == v["choices"][0]["message"]
        hits.append(dt)
    print(f"response cache: computed {first * 1e3:.1f} ms, cached median {statistics.median(hits) * 1e3:.2f} ms "
          f"(max {max(hits) * 1e3:.2f} ms) over {a.repeats}")

    # Second turn about the same image (streamed; distinct seeds keep the response cache out,
    # and a distinct system message before the image keeps the prefix cache from serving the
    # first turn from the previous iteration: each first turn encodes its image).
    q1, q2 = "How many objects are there?", "What color is the circle?"
    t1, t2 = [], []
    for i in range(a.repeats):
        system = {"role": "system", "content": f"Conversation {i} of {int(time.time())}."}
        turn1 = {"messages": [system, {"role": "user", "content": [image, {"type": "text", "text": q1}]}],
                 "max_tokens": 4, "temperature": 0.01, "seed": 1000 + i, "stream": True}
        ttft, answer, _ = post(a.url, turn1)
        t1.append(ttft)
        turn2 = dict(turn1)
        turn2["messages"] = turn1["messages"] + [
            {"role": "assistant", "content": answer.strip() or "2"},
            {"role": "user", "content": q2}]
        ttft, _, _ = post(a.url, turn2)
        t2.append(ttft)
    m1, m2 = statistics.median(t1), statistics.median(t2)
    print(f"second turn: first-turn TTFT {m1 * 1e3:.1f} ms, second-turn TTFT {m2 * 1e3:.1f} ms, "
          f"ratio {m2 / m1:.2f} (median of {a.repeats})")


if __name__ == "__main__":
    main()
