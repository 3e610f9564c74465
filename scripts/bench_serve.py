"""Aggregate decode throughput of `pixlm serve` with N concurrent streams (stdlib only).

Usage: python3 scripts/bench_serve.py --url http://127.0.0.1:8080 [--streams 1 4 8]
           [--max-tokens 256] [--rounds 2]
Start the server with --no-response-cache (every request here is greedy). Each stream sends
a distinct prompt, streamed. `agg tok/s` is all completion tokens / wall time of the round
(prompts included); `decode tok/s` sums each stream's own decode rate, its tokens after the
first over the time from its first token to its last (the prompts' prefill left out, as a
time-per-output-token figure leaves it out).
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse


def one(url, i, max_tokens, out):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({
        "messages": [{"role": "user", "content": f"Stream {i}: describe the shapes."}],
        "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    ttft, tokens, last = None, 0, None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        v = json.loads(line[6:])
        if v["choices"] and v["choices"][0]["delta"].get("content"):
            last = time.perf_counter() - t0
            if ttft is None:
                ttft = last
        if v.get("usage"):
            tokens = v["usage"]["completion_tokens"]
    decode = (tokens - 1) / (last - ttft) if ttft is not None and last > ttft else 0.0
    out[i] = (ttft or 0.0, tokens, time.perf_counter() - t0, decode)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    print(f"{'streams':>7} {'tokens':>7} {'wall s':>7} {'agg tok/s':>9} {'per-stream tok/s':>16} {'mean TTFT ms':>12} {'decode tok/s':>12}")
    for n in a.streams:
        best = None
        for _ in range(a.rounds):
            out = {}
            threads = [threading.Thread(target=one, args=(a.url, i, a.max_tokens, out)) for i in range(n)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            tokens = sum(v[1] for v in out.values())
            ttft = sum(v[0] for v in out.values()) / n
            decode = sum(v[3] for v in out.values())
            row = (tokens / wall, tokens, wall, ttft, decode)
            if best is None or row[0] > best[0]:
                best = row
        rate, tokens, wall, ttft, decode = best
        print(f"{n:>7} {tokens:>7} {wall:>7.2f} {rate:>9.1f} {rate / n:>16.1f} {ttft * 1000:>12.1f} {decode:>12.1f}")


if __name__ == "__main__":
    main()
