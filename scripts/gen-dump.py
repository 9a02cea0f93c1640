#!/usr/bin/env python3
"""Deterministic plain-SQL dump of an 'orders' table, like pg_dump's COPY output, and the same
table a day later: 1% of rows updated in place (scattered), 1.5% inserted at the end, 0.2%
deleted. Columns mix ids, timestamps, amounts, short codes and free text (zstd compresses it
about 3-5x).

usage: gen-dump.py ROWS DAY OUT [scattered|tail]
DAY 1 is the first dump, DAY 2 a day later. 'scattered' (default) spreads updates and deletes over
the whole table; 'tail' confines them to the newest 5% of rows (an append-mostly table).
"""
import random
import sys

WORDS = ("shipped delivered pending refund customer asked for express delivery to the warehouse "
         "invoice paid late discount applied gift wrap fragile handle with care returned damaged "
         "replacement sent backorder priority standard economy").split()


def row(rng, i, version):
    ts = 1_700_000_000 + i * 37 + version * 86400
    amount = rng.randint(100, 10_000_000) / 100
    status = rng.choice(["NEW", "PAID", "SHIP", "DONE", "RFND"])
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
    return f"{i}\t{ts}\t{amount:.2f}\t{status}\tC{rng.randint(1, 99999):05d}\t{text}\n"


def main():
    rows, day, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    pattern = sys.argv[4] if len(sys.argv) > 4 else "scattered"
    change = random.Random(1234)
    updated, deleted = set(), set()
    if day >= 2:
        pool = range(rows) if pattern == "scattered" else range(rows - rows // 20, rows)
        updated = set(change.sample(pool, rows // 100))
        deleted = set(change.sample(pool, rows // 500)) - updated
    with open(out, "w") as f:
        f.write("--\n-- PostgreSQL database dump\n--\n\nCOPY public.orders (id, ts, amount, status, customer, note) FROM stdin;\n")
        for i in range(rows):
            if i in deleted:
                continue
            rng = random.Random(i * 7 + (1 if i in updated else 0))
            f.write(row(rng, i, 1 if i in updated else 0))
        if day >= 2:
            for j in range(rows, rows + rows * 15 // 1000):
                f.write(row(random.Random(j * 7), j, 1))
        f.write("\\.\n\n--\n-- PostgreSQL database dump complete\n--\n")


main()
