#!/usr/bin/env python3
"""Sends N simultaneous chat requests with long text prompts to a pixlm server and reports each
answer (status, prompt tokens, seconds) and the peaks of `pixlm_running_sequences` and
`pixlm_kv_reserved_tokens` seen in /metrics meanwhile (stdlib only).

    python3 scripts/bench_kv_burst.py --url http://127.0.0.1:18150 --requests 6 --words 400
"""
import argparse
import json
import threading
import time
import urllib.error
import urllib.request


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--words", type=int, default=400, help="'lorem ipsum' pairs per prompt")
    ap.add_argument("--max-tokens", type=int, default=8)
    a = ap.parse_args()
    results = [None] * a.requests
    peak = {"pixlm_running_sequences": 0, "pixlm_kv_reserved_tokens": 0}
    done = threading.Event()

    def one(i):
        body = {
            "messages": [{"role": "user", "content": f"word{i} " + "lorem ipsum " * a.words}],
            "max_tokens": a.max_tokens,
            "temperature": 0,
        }
        req = urllib.request.Request(
            a.url + "/v1/chat/completions",
            json.dumps(body).encode(),
            {"content-type": "application/json"},
        )
        t = time.time()
        try:
            with urllib.request.urlopen(req, timeout=1800) as r:
                v = json.load(r)
                results[i] = (r.status, v["usage"]["prompt_tokens"], round(time.time() - t, 1))
        except urllib.error.HTTPError as e:
            results[i] = (e.code, e.read()[:200].decode(errors="replace"), 0)

    def watch():
        while not done.is_set():
            text = urllib.request.urlopen(a.url + "/metrics").read().decode()
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in peak:
                    peak[name] = max(peak[name], int(float(value)))
            time.sleep(0.2)

    w = threading.Thread(target=watch)
    w.start()
    t0 = time.time()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(a.requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    w.join()
    for i, r in enumerate(results):
        print(f"request {i}: status {r[0]}, prompt tokens {r[1]}, {r[2]} s")
    print(f"peaks: {peak}, wall {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
