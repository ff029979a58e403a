#!/usr/bin/env python3
"""Render bench/run.sh's results file (lines of `key value`) as a Markdown table of
absolute numbers and the issue-6 target ratios with PASS/MISS.

Usage: table.py RESULTS_FILE. Missing measurements show as n/a, never as a pass.
"""
import sys


def load(path):
    values = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.strip().partition(" ")
            if key:
                values[key] = value
    return values


def num(values, key):
    try:
        return float(values[key])
    except (KeyError, ValueError):
        return None


def fmt(x, unit="", digits=2):
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}{unit}"


def verdict(ok):
    if ok is None:
        return "n/a"
    return "PASS" if ok else "MISS"


def main():
    v = load(sys.argv[1])
    n = lambda k: num(v, k)  # noqa: E731
    big_mb = (n("big_bytes") or 0) / 1e6
    small_n = 2000
    rows = []

    def ratio(a, b):
        return a / b if a is not None and b else None

    ours_big, peer_big, floor_big = n("ours_big_s"), n("peer_big_s"), n("floor_big_s")
    ours_small, peer_small = n("ours_small_s"), n("peer_small_s")
    r = n("ratio_big_peer") or ratio(peer_big, ours_big)
    rows.append((
        "BIG end to end (4 x 100 MB)",
        f"{fmt(ours_big, ' s')} ({fmt(big_mb / ours_big if ours_big else None, ' MB/s', 0)})",
        f"peer {fmt(peer_big, ' s')} ({fmt(big_mb / peer_big if peer_big else None, ' MB/s', 0)})",
        f"{fmt(r, 'x')}", ">= 2x the peer", verdict(None if r is None else r >= 2)))
    r = n("ratio_big_floor") or ratio(floor_big, ours_big)
    rows.append((
        "BIG vs the floor",
        fmt(ours_big, " s"),
        f"zstd -3 -T2 {fmt(floor_big, ' s')} ({fmt(big_mb / floor_big if floor_big else None, ' MB/s', 0)})",
        fmt(None if r is None else 100 * r, "%", 0), ">= 85% of zstd's speed", verdict(None if r is None else r >= 0.85)))
    r = n("ratio_small_peer") or ratio(peer_small, ours_small)
    rows.append((
        "SMALL end to end (2000 x ~5 KB)",
        f"{fmt(ours_small, ' s')} ({fmt(small_n / ours_small if ours_small else None, ' ep/s', 0)})",
        f"peer {fmt(peer_small, ' s')} ({fmt(small_n / peer_small if peer_small else None, ' ep/s', 0)})",
        fmt(r, "x"), ">= 25x the peer", verdict(None if r is None else r >= 25)))
    ours_put, nginx_put = n("ours_put_per_s"), n("nginx_put_per_s")
    r = n("ratio_put") or ratio(ours_put, nginx_put)
    rows.append((
        "small PUTs, 64 mTLS clients, 4 KiB",
        f"{fmt(ours_put, ' req/s', 0)} (p99 {fmt(n('ours_put_p99_ms'), ' ms', 0)})",
        f"nginx {fmt(nginx_put, ' req/s', 0)} (p99 {fmt(n('nginx_put_p99_ms'), ' ms', 0)})",
        fmt(r, "x"), ">= nginx, fsync on", verdict(None if r is None else r >= 1)))
    rss = n("rss_peak_mib")
    rows.append((
        "receiver peak RSS, 16 x 256 MiB uploads",
        fmt(rss, " MiB", 1), f"{fmt(n('rss_upload_mb_per_s'), ' MB/s', 0)} while uploading", "",
        "<= 64 MiB", verdict(None if rss is None else rss <= 64)))
    st = n("index_startup_s")
    rows.append((
        "start-up, 1,000,000-row index",
        fmt(st, " s", 3), f"empty index {fmt(n('empty_startup_s'), ' s', 3)}; RSS {fmt(n('index_rss_mib'), ' MiB', 0)}", "",
        "<= 2 s", verdict(None if st is None else st <= 2)))
    big_p99, empty_p99 = n("index_put_p99_ms"), n("empty_put_p99_ms")
    r = n("ratio_index_p99") or ratio(big_p99, empty_p99)
    rows.append((
        "PUT p99, 1M-row index vs empty (8 clients)",
        fmt(big_p99, " ms"), f"empty {fmt(empty_p99, ' ms')}", fmt(r, "x"),
        "<= 1.2x", verdict(None if r is None else r <= 1.2)))
    pass_ms, once_ms = n("idle_pass_ms"), n("idle_once_wall_ms")
    rows.append((
        "shipper pass, 100k shipped, none pending",
        f"{fmt(pass_ms, ' ms', 0)} (pass_complete pass_duration_ms)",
        f"whole `once` process {fmt(once_ms, ' ms', 1)}", "",
        "<= 5 ms", verdict(None if pass_ms is None else pass_ms <= 5)))
    idle = n("idle_cpu_percent")
    rows.append((
        "shipper idle CPU (daemon, 10 s)",
        fmt(idle, " %", 3), "of one core", "", "near zero (< 0.5 %)", verdict(None if idle is None else idle < 0.5)))
    p50, mx = n("marker_to_stored_p50_ms"), n("marker_to_stored_max_ms")
    rows.append((
        "done.marker -> stored (10 probes)",
        f"p50 {fmt(p50, ' ms', 0)}, max {fmt(mx, ' ms', 0)}", "scan_interval 5s", "",
        "<= 200 ms (max)", verdict(None if mx is None else mx <= 200)))

    print(f"Machine: {v.get('cpus', '?')} cores ({v.get('cpu_model', '?').replace('_', ' ')}), "
          f"{v.get('mem_gib', '?')} GiB, {v.get('fs', '?')}; commit {v.get('commit', '?')}; {v.get('date', '?')}; "
          f"load average {v.get('loadavg_start', '?')} at the start, {v.get('loadavg_end', '?')} at the end")
    print()
    header = ("measure", "ours", "reference", "ratio", "target", "verdict")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("Ratios are medians of round-by-round ratios (each round runs the compared")
    print("commands back to back); the absolute columns are medians of all runs.")
    print()
    print("Runs (seconds, or req/s, or ms):")
    for key in sorted(k for k in v if k.endswith("_runs")):
        print(f"  {key}: {v[key]}")
    for key in ("sink_put_per_s", "sink_loadgen_cpu_us", "ours_put_loadgen_cpu_us", "nginx_put_loadgen_cpu_us"):
        if key in v:
            print(f"  {key}: {v[key]}")
    if v.get("have_shipper") == "0":
        print("\nepisode-shipper was not available: our end-to-end rows are n/a.")


if __name__ == "__main__":
    main()
