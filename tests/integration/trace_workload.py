#!/usr/bin/env python3
"""A real filesystem workload for trace-mode tests, run on a mounted filesystem for a while:

  * fio random writes with --verify (crc32c, verify_backlog) and periodic fsync,
  * repeated tar extraction of a generated tree, then renames and deletes of older copies,
  * fsync-heavy small files: create, write, fsync, rename, delete.

Usage: trace_workload.py MOUNTPOINT SECONDS [--fio-rate 4m]
Exits non-zero when any part fails (fio's verify included). Runs the three parts in parallel.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time


def make_tarball(path, files=1500, seed=1):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "tree")
        for i in range(files):
            d = os.path.join(root, f"d{i % 37:02d}", f"e{i % 5}")
            os.makedirs(d, exist_ok=True)
            size = rng.choice([100, 900, 4096, 7000, 20000, 65536])
            with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
                f.write(rng.randbytes(size))
        with tarfile.open(path, "w") as tar:
            tar.add(root, arcname="tree")


def fio_part(mnt, seconds, rate, errors):
    d = os.path.join(mnt, "fio")
    os.makedirs(d, exist_ok=True)
    r = subprocess.run(
        ["fio", "--name=verify", f"--directory={d}", "--rw=randwrite", "--bs=4k", "--size=48m",
         "--ioengine=psync", "--verify=crc32c", "--verify_backlog=512", "--verify_fatal=1",
         "--verify_state_save=0",
         "--fsync=64", f"--rate={rate}", "--time_based", f"--runtime={seconds}",
         "--output-format=terse"],
        capture_output=True, text=True)
    if r.returncode != 0:
        errors.append(f"fio exited {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}")


def tar_part(mnt, seconds, tarball, errors):
    deadline = time.time() + seconds
    n = 0
    try:
        while time.time() < deadline:
            dest = os.path.join(mnt, "tar", f"x{n}")
            os.makedirs(dest, exist_ok=True)
            subprocess.run(["tar", "-xf", tarball, "-C", dest], check=True)
            os.rename(os.path.join(dest, "tree"), os.path.join(dest, "renamed"))
            if n >= 2:
                shutil.rmtree(os.path.join(mnt, "tar", f"x{n - 2}"))
            n += 1
    except Exception as e:  # noqa: BLE001
        errors.append(f"tar part: {e}")


def small_files_part(mnt, seconds, errors):
    rng = random.Random(2)
    d = os.path.join(mnt, "small")
    os.makedirs(d, exist_ok=True)
    deadline = time.time() + seconds
    i = 0
    try:
        while time.time() < deadline:
            path = os.path.join(d, f"s{i:06d}.tmp")
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, rng.randbytes(rng.choice([64, 512, 4096, 9000])))
            os.fsync(fd)
            os.close(fd)
            os.rename(path, path[:-4] + ".dat")
            if i >= 200:
                os.unlink(os.path.join(d, f"s{i - 200:06d}.dat"))
            i += 1
        dfd = os.open(d, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    except Exception as e:  # noqa: BLE001
        errors.append(f"small-files part: {e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mount")
    ap.add_argument("seconds", type=int)
    ap.add_argument("--fio-rate", default="4m")
    a = ap.parse_args()
    tarball = os.path.join(tempfile.gettempdir(), f"cdp-workload-{os.getpid()}.tar")
    make_tarball(tarball)
    errors = []
    parts = [threading.Thread(target=fio_part, args=(a.mount, a.seconds, a.fio_rate, errors)),
             threading.Thread(target=tar_part, args=(a.mount, a.seconds, tarball, errors)),
             threading.Thread(target=small_files_part, args=(a.mount, a.seconds, errors))]
    try:
        for p in parts:
            p.start()
        for p in parts:
            p.join()
    finally:
        os.unlink(tarball)
    if errors:
        for e in errors:
            print("workload error:", e, file=sys.stderr)
        sys.exit(1)
    print(f"workload: {a.seconds}s on {a.mount} done")


if __name__ == "__main__":
    main()
