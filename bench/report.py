#!/usr/bin/env python3
"""Turns the benchmark JSON of bench/run.sh into the table, the RATIO / PEER / TARGET lines and
the throughput chart.

Benchmark names are "backend/pattern/impl[/...]". impl "raw" or "idem": throughput is Google
Benchmark's items_per_second (messages per second of wall time, summed over threads). impl
"pair" (raw and idem alternating in one benchmark): the counters raw_msgs_per_s and
idem_msgs_per_s. The median over repetitions when there are several.

  report.py OUT_DIR [--mode quick|full] [--redis-version TEXT] [--postgres-version TEXT]

Reads OUT_DIR/{memory,sqlite,redis,postgres,adapters}.json, and OUT_DIR/peer-N.jsonl with OUT_DIR/peer-idem-N.json
(the peer's rounds and idem's redis lease / batch 100 measured between them), when present; writes
OUT_DIR/results.md, OUT_DIR/chart.dat, OUT_DIR/throughput.png (when gnuplot is installed).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys

BACKENDS = ["memory", "sqlite-normal", "sqlite-full", "redis", "postgres"]
# The broker adapters (adapters.json): patterns are the dedup store idem runs on; no chart.
ADAPTER_BACKENDS = ["redis-streams", "kafka-mock"]
BATCHES = [1, 10, 100, 1000]

# (description, kind, args, minimum). kind "ratio": idem/raw of (backend, pattern);
# "scaling": idem pattern b over idem pattern a of one backend; "peer": idem (backend, pattern)
# over the peer's pattern.
TARGETS = [
    ("memory lease >= 0.5x raw", "ratio", ("memory", "lease"), 0.5),
    ("memory idem 2 threads >= 1.5x 1 thread", "scaling", ("memory", "lease", "lease_2threads"), 1.5),
    ("sqlite NORMAL lease >= 0.9x raw", "ratio", ("sqlite-normal", "lease"), 0.9),
    ("sqlite NORMAL batch100 >= 0.9x raw", "ratio", ("sqlite-normal", "batch100"), 0.9),
    ("sqlite NORMAL transactional >= 0.9x raw", "ratio", ("sqlite-normal", "txn"), 0.9),
    ("sqlite FULL lease >= 0.9x raw", "ratio", ("sqlite-full", "lease"), 0.9),
    ("sqlite FULL batch100 >= 0.9x raw", "ratio", ("sqlite-full", "batch100"), 0.9),
    ("sqlite FULL transactional >= 0.9x raw", "ratio", ("sqlite-full", "txn"), 0.9),
    ("redis lease >= 0.9x raw", "ratio", ("redis", "lease"), 0.9),
    ("redis batch100 >= 0.5x raw", "ratio", ("redis", "batch100"), 0.5),
    ("redis batch100 >= 10x powertools inflight64", "peer", ("redis", "batch100", "inflight64"), 10),
    ("redis lease >= 1.5x powertools sequential", "peer", ("redis", "lease", "sequential"), 1.5),
    ("postgres lease >= 0.9x raw", "ratio", ("postgres", "lease"), 0.9),
    ("postgres transactional >= 0.9x raw", "ratio", ("postgres", "txn"), 0.9),
    ("postgres batch100 >= 0.7x raw", "ratio", ("postgres", "batch100"), 0.7),
]

# Which idem figure each peer pattern is compared with.
PEER_COMPARISON = {"sequential": ("redis", "lease"), "inflight64": ("redis", "batch100")}


def load_benchmarks(out_dir):
    """Returns {(backend, pattern, impl): msgs_per_s} and the list of errors."""
    rates, errors = {}, []
    for name in ("memory", "sqlite", "redis", "redis-cluster", "postgres", "adapters"):
        path = os.path.join(out_dir, name + ".json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            data = json.load(f)
        samples = {}
        medians = {}
        for b in data.get("benchmarks", []):
            parts = b.get("run_name", b["name"]).split("/")
            if b.get("error_occurred"):
                errors.append(f"{b['name']}: {b.get('error_message', '')}")
                continue
            if parts[2] == "pair":
                values = {(parts[0], parts[1], "raw"): b.get("raw_msgs_per_s"),
                          (parts[0], parts[1], "idem"): b.get("idem_msgs_per_s")}
            else:
                values = {tuple(parts[:3]): b.get("items_per_second")}
            for key, value in values.items():
                if value is None:
                    continue
                if b.get("run_type") == "aggregate":
                    if b.get("aggregate_name") == "median":
                        medians[key] = value
                else:
                    samples.setdefault(key, []).append(value)
        for key, values in samples.items():
            values.sort()
            rates[key] = values[len(values) // 2]
        rates.update(medians)
    return rates, errors


GROUP_COUNTERS = ["raw_batch100", "per_msg_1t_alone", "per_msg_1t", "per_msg_nt_alone",
                  "per_msg_nt", "p50_1t_alone_us", "p99_1t_alone_us", "p50_1t_us", "p99_1t_us",
                  "p50_nt_alone_us", "p99_nt_alone_us", "p50_nt_us", "p99_nt_us",
                  "calls_per_group", "grouped_share"]
# (backend, minimum per_msg_nt / per_msg_1t, minimum per_msg_nt / raw_batch100,
#  minimum per_msg_1t / per_msg_1t_alone): the group-commit targets.
GROUP_TARGETS = [("sqlite-full", 4, 0.5, 0.95), ("redis", 4, 0.5, 0.95)]


def load_groups(out_dir):
    """Group-commit benchmarks ("backend/groupN/group"): {(backend, threads): {counter: median}}."""
    samples, medians = {}, {}
    for name in ("sqlite", "redis", "postgres"):
        path = os.path.join(out_dir, name + ".json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            data = json.load(f)
        for b in data.get("benchmarks", []):
            parts = b.get("run_name", b["name"]).split("/")
            if len(parts) < 3 or parts[2] != "group" or b.get("error_occurred"):
                continue
            key = (parts[0], int(parts[1][len("group"):]))
            for counter in GROUP_COUNTERS:
                if counter not in b:
                    continue
                if b.get("run_type") == "aggregate":
                    if b.get("aggregate_name") == "median":
                        medians.setdefault(key, {})[counter] = b[counter]
                else:
                    samples.setdefault(key, {}).setdefault(counter, []).append(b[counter])
    groups = {key: {c: median(v) for c, v in counters.items()} for key, counters in samples.items()}
    for key, counters in medians.items():
        groups.setdefault(key, {}).update(counters)
    return groups


def group_report(groups):
    """The group-commit table, GROUP lines and TARGET lines."""
    order = {b: i for i, b in enumerate(BACKENDS)}
    table = ["| backend | 1 thread, alone | 1 thread | 16 threads, alone | 16 threads | raw batch 100 "
             "| 16t / 1t | 16t / raw batch | p50 / p99 µs, 1 thread | p50 / p99 µs, 16 threads alone "
             "| p50 / p99 µs, 16 threads | calls per group |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines, targets = [], []
    for (backend, threads), g in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99),
                                                                         kv[0][1])):
        if any(c not in g for c in GROUP_COUNTERS):
            continue
        one, many, raw, alone = g["per_msg_1t"], g["per_msg_nt"], g["raw_batch100"], g["per_msg_1t_alone"]
        table.append(f"| {backend} | {fmt(alone)} | {fmt(one)} | {fmt(g['per_msg_nt_alone'])} | "
                     f"{fmt(many)} | {fmt(raw)} | {many / one:.1f}x | {many / raw:.2f} | "
                     f"{g['p50_1t_us']:.0f} / {g['p99_1t_us']:.0f} | "
                     f"{g['p50_nt_alone_us']:.0f} / {g['p99_nt_alone_us']:.0f} | "
                     f"{g['p50_nt_us']:.0f} / {g['p99_nt_us']:.0f} | {g['calls_per_group']:.1f} |")
        lines.append(f"GROUP backend={backend} threads={threads} per_msg_1t={one:.0f} "
                     f"per_msg_{threads}t={many:.0f} raw_batch100={raw:.0f} "
                     f"per_msg_1t_alone={alone:.0f} per_msg_{threads}t_alone={g['per_msg_nt_alone']:.0f} "
                     f"p50_1t_us={g['p50_1t_us']:.0f} "
                     f"p99_1t_us={g['p99_1t_us']:.0f} p50_{threads}t_us={g['p50_nt_us']:.0f} "
                     f"p99_{threads}t_us={g['p99_nt_us']:.0f} "
                     f"calls_per_group={g['calls_per_group']:.1f} "
                     f"grouped_share={g['grouped_share']:.2f}")
    for backend, scale, of_raw, single in GROUP_TARGETS:
        g = next((v for (b, _), v in groups.items() if b == backend), None)
        checks = [(f"{backend} 16 threads >= {scale}x 1 thread", "per_msg_nt", "per_msg_1t", scale),
                  (f"{backend} 16 threads >= {of_raw}x raw batch100", "per_msg_nt", "raw_batch100",
                   of_raw),
                  (f"{backend} 1 thread grouped >= {single}x alone", "per_msg_1t",
                   "per_msg_1t_alone", single)]
        for description, num, den, minimum in checks:
            if g is None or not g.get(den):
                targets.append(f"TARGET {description}: not measured")
                continue
            value = g[num] / g[den]
            targets.append(f"TARGET {description}: {value:.2f} "
                           f"{'met' if value >= minimum else 'MISSED'}")
    return (table if len(table) > 2 else []), lines, targets


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def load_peer(out_dir):
    """The peer's msgs/s per pattern, and idem's figures measured in the same rounds, as
    {pattern: {"msgs_per_s": median, "rounds": n}} and {(backend, pattern): median}."""
    peer_runs, idem_runs = {}, {}
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if name.startswith("peer-") and name.endswith(".jsonl"):
            with open(path) as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        peer_runs.setdefault(row["pattern"], []).append(row["msgs_per_s"])
        elif name.startswith("peer-idem-") and name.endswith(".json"):
            with open(path) as f:
                for b in json.load(f).get("benchmarks", []):
                    parts = b.get("run_name", b["name"]).split("/")
                    if b.get("error_occurred") or "idem_msgs_per_s" not in b:
                        continue
                    idem_runs.setdefault((parts[0], parts[1]), []).append(b["idem_msgs_per_s"])
    peer = {p: {"msgs_per_s": median(v), "rounds": len(v)} for p, v in peer_runs.items()}
    idem = {k: median(v) for k, v in idem_runs.items()}
    return peer, idem


def fmt(n):
    return f"{n:,.0f}"


def pattern_order(pattern):
    order = (["lease", "lease_2threads", "txn"] + [f"batch{b}" for b in BATCHES] +
             ["sqlite", "redis"])
    return (order.index(pattern) if pattern in order else len(order), pattern)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} x {cpu}{mem}, Linux {platform.release()}"


def sqlite_version():
    try:
        out = subprocess.run(["pkg-config", "--modversion", "sqlite3"], capture_output=True,
                             text=True, check=True).stdout.strip()
        return out or "?"
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--mode", default="quick")
    parser.add_argument("--redis-version", default="")
    parser.add_argument("--command", default="", help="the run.sh command line, for the context")
    parser.add_argument("--postgres-version", default="")
    args = parser.parse_args()

    rates, errors = load_benchmarks(args.out_dir)
    peer, idem_beside_peer = load_peer(args.out_dir)
    pairs = sorted({(b, p) for (b, p, _) in rates},
                   key=lambda bp: ((BACKENDS + ADAPTER_BACKENDS).index(bp[0])
                                   if bp[0] in BACKENDS + ADAPTER_BACKENDS else 99,
                                   pattern_order(bp[1])))

    lines = []
    header = f"| backend | pattern | raw msgs/s | idem msgs/s | idem/raw |"
    lines += [header, "|---|---|---:|---:|---:|"]
    ratio_lines = []
    for backend, pattern in pairs:
        raw = rates.get((backend, pattern, "raw"))
        idem = rates.get((backend, pattern, "idem"))
        if raw is None or idem is None:
            continue
        ratio = idem / raw
        lines.append(f"| {backend} | {pattern} | {fmt(raw)} | {fmt(idem)} | {ratio:.2f} |")
        ratio_lines.append(f"RATIO backend={backend} pattern={pattern} raw={raw:.0f} "
                           f"idem={idem:.0f} ratio={ratio:.3f}")

    peer_lines, peer_table = [], []
    for pattern, row in sorted(peer.items()):
        compared = PEER_COMPARISON.get(pattern, ("redis", "lease"))
        idem = idem_beside_peer.get(compared, rates.get((*compared, "idem")))
        if idem is None:
            continue
        ratio = idem / row["msgs_per_s"]
        what = "/".join(PEER_COMPARISON.get(pattern, ("redis", "lease")))
        peer_table.append(f"| powertools | {pattern} | {fmt(row['msgs_per_s'])} | {what} | "
                          f"{fmt(idem)} | {ratio:.1f} |")
        peer_lines.append(f"PEER name=powertools pattern={pattern} msgs={row['msgs_per_s']:.0f} "
                          f"idem={idem:.0f} ratio={ratio:.3f}")
    if peer_table:
        lines += ["", "Peer and idem measured in alternating rounds (medians of 3):", "",
                  "| peer | pattern | peer msgs/s | idem compared | idem msgs/s | idem/peer |",
                  "|---|---|---:|---|---:|---:|"] + peer_table

    target_lines = []
    for description, kind, key, minimum in TARGETS:
        value = None
        if kind == "ratio":
            raw = rates.get((*key, "raw"))
            idem = rates.get((*key, "idem"))
            if raw and idem:
                value = idem / raw
        elif kind == "scaling":
            one = rates.get((key[0], key[1], "idem"))
            two = rates.get((key[0], key[2], "idem"))
            if one and two:
                value = two / one
        elif kind == "peer":
            idem = idem_beside_peer.get((key[0], key[1]), rates.get((key[0], key[1], "idem")))
            row = peer.get(key[2])
            if idem and row:
                value = idem / row["msgs_per_s"]
        if value is None:
            target_lines.append(f"TARGET {description}: not measured")
        else:
            verdict = "met" if value >= minimum else "MISSED"
            target_lines.append(f"TARGET {description}: {value:.2f} {verdict}")

    group_table, group_lines, group_targets = group_report(load_groups(args.out_dir))
    if group_table:
        lines += ["", "Group commit: per-message Process, one thread and 16 threads on one store "
                  "(msgs/s; alone = group_limit=1):", ""] + group_table
    ratio_lines += group_lines
    target_lines += group_targets

    command = args.command or ("bench/run.sh" + (" --quick" if args.mode == "quick" else ""))
    context = (f"`{command}` ({args.mode} run); {machine()}; "
               f"{args.redis_version.split(' sha=')[0]} on loopback, appendonly yes, "
               f"appendfsync everysec; SQLite {sqlite_version()} WAL, checkpoints untimed "
               f"between paired units")
    if any(b == "postgres" for (b, _, _) in rates):
        context += (f"; PostgreSQL {args.postgres_version or '?'} private cluster on loopback, "
                    f"fsync and synchronous_commit on, raw and idem paired unit by unit")
    if len(lines) > 2 and lines[2] == "":
        lines = lines[2:]  # no paired figures (a --group run): no empty table
    print()
    print("\n".join(lines))
    print()
    print("\n".join(ratio_lines + peer_lines))
    print()
    print("\n".join(target_lines))
    print(f"\n{context}")
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)

    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n\n```\n" + "\n".join(ratio_lines + peer_lines + target_lines)
                + "\n```\n\n" + context + "\n")

    # Chart data: one block per backend (gnuplot index), columns batch raw idem.
    dat = os.path.join(args.out_dir, "chart.dat")
    with open(dat, "w") as f:
        for backend in BACKENDS:
            f.write(f"# {backend}\n")
            for batch in BATCHES:
                raw = rates.get((backend, f"batch{batch}", "raw"), float("nan"))
                idem = rates.get((backend, f"batch{batch}", "idem"), float("nan"))
                f.write(f"{batch} {raw:.1f} {idem:.1f}\n")
            f.write("\n\n")
    # The chart has one panel per backend: a run of some backends only (--only, --adapters) has
    # panels without points, which gnuplot refuses, so it gets the table and no chart.
    has_batches = all(any((b, f"batch{n}", "raw") in rates for n in BATCHES) for b in BACKENDS)
    if not has_batches:
        print("report.py: not every backend was measured; no chart", file=sys.stderr)
    elif shutil.which("gnuplot"):
        draw_chart(args.out_dir, dat, peer)
    else:
        print("report.py: gnuplot not found; no chart", file=sys.stderr)
    return 1 if errors else 0


def draw_chart(out_dir, dat, peer):
    png = os.path.join(out_dir, "throughput.png")
    titles = {"memory": "memory (in process)", "sqlite-normal": "SQLite WAL, synchronous=NORMAL",
              "sqlite-full": "SQLite WAL, synchronous=FULL",
              "redis": "Redis (loopback, AOF everysec)",
              "postgres": "PostgreSQL 15 (loopback, fsync on, batches pipelined)"}
    script = [
        "set terminal pngcairo size 1200,1300 font ',10'" ,
        f"set output '{png}'",
        "set multiplot layout 3,2 title 'idem vs raw backend: throughput against batch size'",
        "set logscale xy", "set xrange [0.7:1500]", "set xtics (1, 10, 100, 1000)",
        "set xlabel 'messages per batch'", "set ylabel 'messages / s'", "set grid",
        "set key bottom right", "set format y '%.0s%c'",
    ]
    for i, backend in enumerate(BACKENDS):
        script.append(f"set title '{titles.get(backend, backend)}'")
        plot = (f"plot '{dat}' index {i} using 1:2 with linespoints lw 2 pt 7 title 'raw', "
                f"'' index {i} using 1:3 with linespoints lw 2 pt 5 title 'idem'")
        if backend == "redis" and "inflight64" in peer:
            plot += (f", {peer['inflight64']['msgs_per_s']:.1f} with lines dt 2 lw 2 "
                     f"title 'Powertools, 64 in flight'")
        script.append(plot)
    script.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(script), text=True, check=True)
    print(f"chart: {png}")


if __name__ == "__main__":
    sys.exit(main())
