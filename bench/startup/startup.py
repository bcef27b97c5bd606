#!/usr/bin/env python3
"""Start-up timing for the CNI plugins: each command runs with CNI_COMMAND=VERSION, stdin from /dev/null,
stdout discarded. Commands are interleaved round by round (so a burst of load on a shared machine hits all
of them alike), after a few warm-up rounds. Reports, per command, the median and p10/p90 of the wall time and
the median CPU time (user + sys of the child, from wait4), and both medians as ratios to the baseline
(the first command). Usage: startup.py [--runs N] [--warmup N] NAME=COMMAND... (COMMAND split on spaces)."""
import argparse
import json
import os
import statistics
import sys
import time


def run_once(argv, env):
    devnull_in = os.open(os.devnull, os.O_RDONLY)
    devnull_out = os.open(os.devnull, os.O_WRONLY)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.dup2(devnull_in, 0)
        os.dup2(devnull_out, 1)
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    os.close(devnull_in)
    os.close(devnull_out)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"startup.py: {' '.join(argv)} exited {code}")
    return wall * 1000, (ru.ru_utime + ru.ru_stime) * 1000


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="also write the raw samples here")
    ap.add_argument("commands", nargs="+")
    a = ap.parse_args()
    cmds = []
    for spec in a.commands:
        name, _, cmd = spec.partition("=")
        argv = cmd.split()
        if not argv[0].startswith("/"):
            sys.exit(f"startup.py: give an absolute path for {name}")
        cmds.append((name, argv))
    # BERTH_SOCKET names no socket: berth-shim always falls back (a berthd on this host would answer it).
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "VERSION",
           "BERTH_SOCKET": "/nonexistent/berthd.sock"}
    samples = {name: ([], []) for name, _ in cmds}
    for r in range(a.warmup + a.runs):
        for name, argv in cmds:
            wall, cpu = run_once(argv, env)
            if r >= a.warmup:
                samples[name][0].append(wall)
                samples[name][1].append(cpu)
    base_wall = statistics.median(samples[cmds[0][0]][0])
    base_cpu = statistics.median(samples[cmds[0][0]][1])
    print(f"runs per command: {a.runs} (after {a.warmup} warm-up rounds), interleaved; load average before: "
          f"{open('/proc/loadavg').read().split()[0]}")
    print()
    print("| command | wall median (ms) | wall p10–p90 (ms) | CPU median (ms) | wall / baseline | CPU / baseline |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, _ in cmds:
        w, c = samples[name]
        wm, cm = statistics.median(w), statistics.median(c)
        print(f"| {name} | {wm:.1f} | {pct(w, 10):.1f}–{pct(w, 90):.1f} | {cm:.1f} | {wm / base_wall:.2f} | {cm / base_cpu:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({name: {"wall_ms": w, "cpu_ms": c} for name, (w, c) in samples.items()}, f)


if __name__ == "__main__":
    main()
