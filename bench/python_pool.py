#!/usr/bin/env python3
"""One repetition of the sdfutures benchmark's figures for concurrent.futures.ProcessPoolExecutor.

Run by sdfutures_bench (figure 7), which prints the ratios; prints "key value" lines:
ready_s, submit_per_s, map_per_s, map_chunked_per_s, bytes_per_s, version, start_method, executable.
"""
import argparse
import concurrent.futures
import multiprocessing
import platform
import statistics
import sys
import time


def trivial(x):
    return x + 1


def make_bytes(n):
    return b"Z" * n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--bytes", type=int, default=64 << 20)
    parser.add_argument("--transfers", type=int, default=3)
    parser.add_argument("--chunked-tasks", type=int, default=1000000)
    args = parser.parse_args()
    k = args.tasks

    # fork, like sdfutures' workers (and Python 3.11's default on Linux; 3.14 changes the default).
    context = multiprocessing.get_context("fork")
    clock = time.perf_counter
    t0 = clock()
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        pool.submit(trivial, 1).result()
        ready = clock() - t0
        list(pool.map(trivial, range(4 * args.workers)))  # every worker up

        t0 = clock()
        futures = [pool.submit(trivial, i) for i in range(k)]
        for f in futures:
            f.result()
        submit = k / (clock() - t0)

        t0 = clock()
        list(pool.map(trivial, range(k)))
        mapped = k / (clock() - t0)

        n = args.chunked_tasks
        t0 = clock()
        list(pool.map(trivial, range(n), chunksize=max(1, n // 8)))
        chunked = n / (clock() - t0)

        rates = []
        for _ in range(args.transfers):
            t0 = clock()
            value = pool.submit(make_bytes, args.bytes).result()
            rates.append(args.bytes / (clock() - t0))
            assert len(value) == args.bytes
            del value

    print("ready_s", ready)
    print("submit_per_s", submit)
    print("map_per_s", mapped)
    print("map_chunked_per_s", chunked)
    print("bytes_per_s", statistics.median(rates))
    print("version", platform.python_version())
    print("start_method", context.get_start_method())
    print("executable", sys.executable)


if __name__ == "__main__":
    main()
