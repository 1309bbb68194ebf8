"""A clean Debian 12 root to install packages into, as a customer's server has it: debootstrap's
minbase plus systemd, nothing of ours and none of our third-party libraries.

The root is built once (minutes, from the configured apt mirror) and cached outside the tree in
${CDP_LAB_CACHE:-~/.cache/cdp-lab}/minbase-<hash of its inputs>; every test copies it and works on
the copy, so the cache stays pristine. A missing debootstrap fails the test under CI=true and
skips it otherwise.
"""
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess

from tracetest import fail_or_skip

SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE = ["systemd"]  # every Debian 12 server has it; the agent's unit needs systemd-analyze
ARCH = "amd64"


def apt_mirror():
    """The Debian mirror this machine's apt uses (CDP_DEBIAN_MIRROR overrides)."""
    if os.environ.get("CDP_DEBIAN_MIRROR"):
        return os.environ["CDP_DEBIAN_MIRROR"]
    for path in ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]:
        try:
            text = open(path).read()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or \
            re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+", text, re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def _debootstrap_version():
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "debootstrap"],
                       capture_output=True, text=True)
    return r.stdout.strip()


def cached_root():
    """The path of the cached pristine root, built first if needed (never modify it: copy())."""
    if os.geteuid() != 0:
        fail_or_skip("a Debian root needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        fail_or_skip("debootstrap is missing; run deploy/install-deps.sh")
    mirror = apt_mirror()
    key = "\n".join([SUITE, VARIANT, ARCH, ",".join(INCLUDE), mirror, _debootstrap_version()])
    cache = os.environ.get("CDP_LAB_CACHE", os.path.expanduser("~/.cache/cdp-lab"))
    os.makedirs(cache, exist_ok=True)
    root = os.path.join(cache, "minbase-" + hashlib.sha256(key.encode()).hexdigest()[:16])
    with open(root + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait and reuse
        if os.path.isdir(root):
            return root
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        print(f"debian_root: building {SUITE} {VARIANT} + {' '.join(INCLUDE)} from {mirror} "
              f"into {root} (once; a few minutes)", flush=True)
        r = subprocess.run(["debootstrap", f"--variant={VARIANT}", f"--arch={ARCH}",
                            "--include=" + ",".join(INCLUDE), SUITE, partial, mirror],
                           capture_output=True, text=True)
        if r.returncode != 0:
            log = os.path.join(partial, "debootstrap/debootstrap.log")
            tail = open(log).read()[-3000:] if os.path.exists(log) else ""
            shutil.rmtree(partial, ignore_errors=True)
            raise AssertionError(f"debootstrap {SUITE} from {mirror} failed ({r.returncode}): "
                                 f"{r.stderr[-2000:]}\n{tail}")
        # Downloaded packages are not part of a server's file tree.
        subprocess.run(["chroot", partial, "apt-get", "clean"], check=True)
        os.rename(partial, root)
        return root


def copy(dest):
    """Copies the pristine root to `dest` (which must not exist) and returns dest."""
    src = cached_root()
    subprocess.run(["cp", "-a", src, dest], check=True)
    return dest


@contextlib.contextmanager
def proc_mounted(root):
    """/proc inside `root` for the duration: glibc resolves an RPATH's $ORIGIN through
    /proc/self/exe, and cdp-agent finds its watchdog the same way. Always unmounted again."""
    target = os.path.join(root, "proc")
    subprocess.run(["mount", "-t", "proc", "proc", target], check=True)
    try:
        yield
    finally:
        if subprocess.run(["umount", target]).returncode != 0:
            subprocess.run(["umount", "-l", target], check=True)


def chroot(root, *args, check=True, input=None):
    """Runs a command inside `root` with a clean environment; returns the CompletedProcess."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    r = subprocess.run(["chroot", root, *args], capture_output=True, text=True, env=env,
                       input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"chroot {root} {' '.join(args)} exited {r.returncode}:\n"
                             f"{r.stdout}{r.stderr}")
    return r


def file_tree(root, skip=()):
    """{relative path: (kind, mode, size, symlink target or content hash)} of everything under
    root, except the subtrees in `skip` (relative paths, e.g. "proc", "var/lib/dpkg")."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames
                       if os.path.normpath(os.path.join(rel_dir, d)) not in skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            if os.path.islink(path):
                tree[rel] = ("link", 0, 0, os.readlink(path))
            elif os.path.isdir(path):
                tree[rel] = ("dir", st.st_mode, 0, "")
            elif os.path.isfile(path):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                tree[rel] = ("file", st.st_mode, st.st_size, h.hexdigest())
            else:
                tree[rel] = ("other", st.st_mode, 0, str(st.st_rdev))
    return tree


def tree_diff(before, after):
    """Lines naming what was added, removed or changed between two file_tree() results."""
    lines = [f"added {p} {after[p]}" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"changed {p}: {before[p]} -> {after[p]}"
              for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines
