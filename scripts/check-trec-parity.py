#!/usr/bin/env python3
"""Parity with trec_eval: on the same scores, `edir-synth score` must report exactly the
recall_1/3/5/10 that pytrec_eval (trec_eval) computes, overall and per subcategory, including
deliberate ties (duplicate corpus vectors, low-dimensional integer vectors).

Usage: scripts/check-trec-parity.py [PATH_TO_edir-synth]   (CI runs it; needs pytrec-eval-terrier)
"""
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

import pytrec_eval

binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/edir-synth"
SUBS = ["color", "remove", "count", "style", "complex"]


def write_npy(path, rows):
    dim = len(rows[0])
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (len(rows), dim)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        for row in rows:
            f.write(struct.pack("<%df" % dim, *row))


def check(seed, queries_n, corpus_n, dim, duplicates):
    rng = random.Random(seed)
    work = tempfile.mkdtemp()
    bench, emb, out = (os.path.join(work, d) for d in ("bench", "emb", "out"))
    os.makedirs(bench)
    os.makedirs(emb)
    corpus_ids = ["%d_%09d_%d.png" % (i % 50, rng.randrange(10**9), i % 7) for i in range(corpus_n)]
    corpus_ids = list(dict.fromkeys(corpus_ids))
    corpus_vectors = []
    for i, _ in enumerate(corpus_ids):
        if duplicates and i > 0 and rng.random() < 0.3:
            corpus_vectors.append(list(corpus_vectors[rng.randrange(i)]))  # an exact tie
        else:
            corpus_vectors.append([float(rng.randint(-2, 2)) for _ in range(dim)])
    with open(os.path.join(bench, "corpus.jsonl"), "w") as f:
        for cid in corpus_ids:
            f.write(json.dumps({"id": cid, "image": cid, "modality": "image"}) + "\n")
    qrels, query_vectors = {}, []
    with open(os.path.join(bench, "queries.jsonl"), "w") as fq, open(os.path.join(bench, "instances.jsonl"), "w") as fi:
        for q in range(queries_n):
            qid = "query_%d" % q
            pos = rng.sample(corpus_ids, rng.choice([1, 1, 1, 2]))
            neg = rng.sample(corpus_ids, 5)
            fq.write(json.dumps({"id": qid, "image": "ref.png", "text": "t", "modality": "image", "metadata": {"subcategory": SUBS[q % len(SUBS)]}}) + "\n")
            fi.write(json.dumps({"qid": qid, "pos": pos, "neg": neg}) + "\n")
            qrels[qid] = {p: 1 for p in pos}
            # Aim near a positive so hits and ties at the cut-offs are common.
            base = corpus_vectors[corpus_ids.index(pos[0])]
            query_vectors.append([x + (rng.choice([0.0, 0.0, 1.0, -1.0]) if duplicates else rng.gauss(0, 0.7)) for x in base])
    write_npy(os.path.join(emb, "queries.npy"), query_vectors)
    write_npy(os.path.join(emb, "corpus.npy"), corpus_vectors)
    subprocess.run([binary, "score", bench, "--embeddings", "m=" + emb, "--out", out], check=True, stdout=subprocess.DEVNULL)
    ours = json.load(open(os.path.join(out, "results.json")))
    run = json.load(open(os.path.join(out, "predictions.json")))
    measures = {"recall_1", "recall_3", "recall_5", "recall_10"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    failures = 0
    groups = {"overall": list(per_query)}
    for q in range(queries_n):
        groups.setdefault(SUBS[q % len(SUBS)], []).append("query_%d" % q)
    for group, qids in groups.items():
        mine = ours["overall"] if group == "overall" else ours["by_subcategory"][group]
        for k in (1, 3, 5, 10):
            theirs = sum(per_query[qid]["recall_%d" % k] for qid in qids) / len(qids)
            if abs(theirs - mine["recall@%d" % k]) > 1e-12:
                print("MISMATCH seed %d %s recall@%d: ours %.6f trec_eval %.6f" % (seed, group, k, mine["recall@%d" % k], theirs))
                failures += 1
    return failures, ours["ties"]


total, failed, ties = 0, 0, 0
for seed, (nq, nc, dim, dup) in enumerate([(60, 300, 4, True), (200, 2500, 3, True), (100, 5000, 32, False), (50, 120, 2, True)]):
    f, t = check(seed, nq, nc, dim, dup)
    total += 1
    failed += 1 if f else 0
    ties += t
print("trec_eval parity (%d queries with tied positives across cases): %d passed, %d failed" % (ties, total - failed, failed))
sys.exit(1 if failed else 0)
