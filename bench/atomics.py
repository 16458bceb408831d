#!/usr/bin/env python3
"""Atomic instructions executed in a callgrind profile made with --dump-instr=yes: the lock-
prefixed instructions (and xchg with a memory operand, locked without the prefix) found in the
profiled objects by objdump, weighted by how often callgrind saw each one run.

Why a count of its own: a reference count taken and dropped (two uncontended atomics)
measured 10-20 ns on the machines this project measures on, about what an allocation and its
free cost, yet each atomic is one instruction in an instruction count. Per-request
reference counts were most of what separated PUBLIC's CPU time over HTTP from what its
instruction count predicted (issue 10 part 7; BENCHMARKS.md, stop 22).

Usage: bench/atomics.py PROFILE [--by-function]
Prints the total; with --by-function, then each function's count, largest first.
"""

import collections
import re
import subprocess
import sys


def profile_counts(path):
    """(object, address) -> instructions executed there, and the function each address is in."""
    names = {"ob": {}, "fn": {}}
    counts = collections.defaultdict(int)
    function_of = {}
    ob = fn = None
    last = 0
    skip_call_cost = False

    def name(kind, text):
        m = re.match(r"\((\d+)\)(?: (.*))?", text)
        if m.group(2):
            names[kind][m.group(1)] = m.group(2)
        return names[kind][m.group(1)]

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("ob="):
                ob = name("ob", line[3:])
            elif line.startswith("fn="):
                fn = name("fn", line[3:])
            elif line.startswith("cob="):
                name("ob", line[4:])
            elif line.startswith("cfn="):
                name("fn", line[4:])
            elif line.startswith("calls="):
                # The next cost line is the call's inclusive cost, not this address's own.
                skip_call_cost = True
            elif line and line[0] in "0123456789+-*":
                parts = line.split()
                a = parts[0]
                if a == "*":
                    addr = last
                elif a[0] in "+-":
                    addr = last + int(a, 0)
                else:
                    addr = int(a, 0)
                last = addr
                if skip_call_cost:
                    skip_call_cost = False
                elif len(parts) >= 3:
                    counts[(ob, addr)] += int(parts[2])
                    function_of[(ob, addr)] = fn
    return counts, function_of


def atomic_addresses(obj):
    """Addresses of the atomic instructions in an object file."""
    try:
        out = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True
        ).stdout
    except OSError:
        return set()
    found = set()
    for line in out.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
        if m and (m.group(2).startswith("lock ") or (m.group(2).startswith("xchg") and "(" in m.group(2))):
            found.add(int(m.group(1), 16))
    return found


def main():
    counts, function_of = profile_counts(sys.argv[1])
    atomic = {ob: atomic_addresses(ob) for ob in {ob for ob, _ in counts}}
    total = 0
    per_function = collections.defaultdict(int)
    for (ob, addr), n in counts.items():
        if addr in atomic[ob]:
            total += n
            per_function[function_of[(ob, addr)]] += n
    print(total)
    if "--by-function" in sys.argv:
        for f, n in sorted(per_function.items(), key=lambda x: -x[1]):
            print(f"{n:>12} {f}")


if __name__ == "__main__":
    main()
