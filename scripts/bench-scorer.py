#!/usr/bin/env python3
"""Exact top-10 over 10,000 queries x 100,000 corpus x 1,024 dims (random unit vectors), in one
run: numpy's matmul alone (the SGEMM limit), faiss IndexFlatIP, and edir-synth's scorer.
Prints medians, the time ratio ours/faiss, GFLOP/s, exactness against faiss, and peak memory.

Usage: scripts/bench-scorer [RUNS] [QUERIES] [CORPUS] [DIM]   (needs numpy and faiss-cpu)
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
nq, nc, d = (int(x) for x in (sys.argv[2:5] if len(sys.argv) > 4 else (10000, 100000, 1024)))
k = 10
work = tempfile.mkdtemp()
rng = np.random.default_rng(0)
q = rng.standard_normal((nq, d), dtype=np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
c = rng.standard_normal((nc, d), dtype=np.float32)
c /= np.linalg.norm(c, axis=1, keepdims=True)
np.save(os.path.join(work, "queries.npy"), q)
np.save(os.path.join(work, "corpus.npy"), c)
flops = 2.0 * nq * nc * d

sgemm = []
for _ in range(runs):
    t = time.perf_counter()
    for start in range(0, nq, 2000):  # blocked so memory stays bounded, as a scorer must
        np.matmul(q[start:start + 2000], c.T)
    sgemm.append(time.perf_counter() - t)

import faiss  # noqa: E402

faiss_times = []
index = faiss.IndexFlatIP(d)
index.add(c)
for _ in range(runs):
    t = time.perf_counter()
    _, faiss_ids = index.search(q, k)
    faiss_times.append(time.perf_counter() - t)

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
subprocess.run(["cargo", "build", "--release", "--quiet", "--locked", "-p", "edir-retrieval", "--example", "bench_topk"], cwd=root, check=True)
out = subprocess.run([os.path.join(root, "target/release/examples/bench_topk"), work, str(k), str(runs)], check=True, capture_output=True, text=True).stdout
print(out, end="")
ours = [float(line.split()[3]) for line in out.splitlines() if line.startswith("ours run")]
tiles = [float(line.split()[3]) for line in out.splitlines() if line.startswith("tiles-only run")]
ours_top = json.load(open(os.path.join(work, "ours_topk.json")))
same = sum(1 for i, row in enumerate(ours_top) if list(row) == [int(x) for x in faiss_ids[i]])

m_s, m_f, m_o = statistics.median(sgemm), statistics.median(faiss_times), statistics.median(ours)
print("shapes: %d queries x %d corpus x %d dims, top-%d, medians of %d runs" % (nq, nc, d, k, runs))
print("numpy matmul (SGEMM only): %.3f s  %.1f GFLOP/s" % (m_s, flops / m_s / 1e9))
print("faiss IndexFlatIP:         %.3f s  %.1f GFLOP/s  (%.2fx SGEMM)" % (m_f, flops / m_f / 1e9, m_f / m_s))
print("edir-synth scorer:         %.3f s  %.1f GFLOP/s  (%.2fx SGEMM)" % (m_o, flops / m_o / 1e9, m_o / m_s))
m_t = statistics.median(tiles)
print("edir-synth GEMM tiles only: %.3f s  %.1f GFLOP/s  (%.2fx SGEMM; the selection adds %.1f%%)" % (m_t, flops / m_t / 1e9, m_t / m_s, 100.0 * (m_o - m_t) / m_t))
print("time ratio ours / faiss: %.3f (goal < 1.0)" % (m_o / m_f))
print("exactness: top-%d of the first %d queries identical to faiss for %d" % (k, len(ours_top), same))
print("embeddings: %.0f MB" % ((q.nbytes + c.nbytes) / 1e6))
