#!/usr/bin/env python3
"""The cdp-agent Debian package installs on a clean Debian 12 and leaves it clean:
  1. deploy/build-agent-deb.sh builds cdp-agent_VERSION_amd64.deb (CPack, Release, no test
     hooks, third-party libraries bundled); a test-hooks build refuses to package, and the
     packaged binaries contain no test hook's name;
  2. its control fields, maintainer scripts and exact file list; Depends names only the base set;
  3. installed with dpkg into a copy of a minbase + systemd root that has none of the agent's
     third-party libraries: `cdp-agent --help` prints exactly what the built binary prints, both
     executables' libraries resolve to the bundle or to libc6/libstdc++6/libgcc-s1, the unit
     passes `systemd-analyze verify`, and installing it again (an upgrade) keeps it working;
  4. `dpkg -r` removes the program and keeps the agents' state; `dpkg -P` removes the state and
     the links of enabled instances: the root's file tree is as before the install.
/proc is mounted in the root while the package is in it (glibc resolves $ORIGIN through
/proc/self/exe) and unmounted even on failure; the root copy is removed even on failure."""
import os
import re
import subprocess

import cdptest as t
import debian_root

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
ALLOWED_DEPENDS = {"libc6", "libgcc-s1", "libstdc++6", "systemd"}
RUNTIME_PACKAGES = {"libc6", "libstdc++6", "libgcc-s1"}
RUNTIME_LIB = re.compile(r"^(ld-linux|libc|libm|libpthread|libdl|librt|libresolv|libutil|libmvec|"
                         r"libstdc\+\+|libgcc_s)[.-]")
# The agent's own third-party libraries (direct dependencies): bundled, absent from minbase.
THIRD_PARTY = ["libzmq.so.5", "libprotobuf.so.32", "liburing.so.2", "libaio.so.1",
               "libboost_log.so.1.74.0", "libboost_program_options.so.1.74.0"]
OWN_PATHS = """
./etc/
./etc/cdp/
./etc/cdp/agent/
./lib/
./lib/systemd/
./lib/systemd/system/
./lib/systemd/system/cdp-agent@.service
./usr/
./usr/bin/
./usr/bin/cdp-agent
./usr/bin/cdp-thaw-watchdog
./usr/lib/
./usr/lib/cdp-agent/
./usr/lib/cdp-agent/thaw-frozen
./usr/share/
./usr/share/doc/
./usr/share/doc/cdp-agent/
./usr/share/doc/cdp-agent/bundled-libraries
./usr/share/doc/cdp-agent/copyright
./usr/share/doc/cdp-agent/examples/
./usr/share/doc/cdp-agent/examples/VOLUME.conf
./usr/share/doc/cdp-agent/operator-guide.md
./usr/share/doc/cdp-agent/packaging.md
./usr/share/doc/cdp-agent/third-party/
""".split()
# What dpkg itself changes in a root (its database and log), and what is not a file tree.
NOT_COMPARED = {"proc", "sys", "dev", "run", "tmp", "var/lib/dpkg", "var/log", "var/cache/debconf"}


def project_version():
    text = open(os.path.join(REPO, "CMakeLists.txt")).read()
    return re.search(r"project\(cdp-appliance VERSION (\S+)", text).group(1)


def build_deb():
    t.log("1. deploy/build-agent-deb.sh")
    r = subprocess.run(["bash", os.path.join(REPO, "deploy/build-agent-deb.sh")],
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, f"build-agent-deb.sh failed:\n{r.stdout}{r.stderr[-5000:]}"
    deb = r.stdout.strip().splitlines()[-1]
    assert os.path.basename(deb) == f"cdp-agent_{project_version()}_amd64.deb", deb
    return deb


def check_hooks_build_refuses():
    """The tests' build (test hooks on) must not make a package for customers."""
    if not os.path.exists(os.path.join(t.BIN, "build.ninja")):
        return
    r = subprocess.run(["cmake", "--build", t.BIN, "--target", "agent-deb"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0, "agent-deb packaged a build with test hooks"
    assert ("a package for a customer's server needs no test hooks and bundled libraries: run "
            "deploy/build-agent-deb.sh") in r.stdout, r.stdout


def deb_field(deb, field):
    return subprocess.run(["dpkg-deb", "-f", deb, field], capture_output=True, text=True,
                          check=True).stdout.strip()


def check_control(deb):
    t.log("2. control fields and maintainer scripts")
    assert deb_field(deb, "Package") == "cdp-agent"
    assert deb_field(deb, "Version") == project_version()
    assert deb_field(deb, "Architecture") == "amd64"
    assert deb_field(deb, "Section") == "admin"
    assert deb_field(deb, "Priority") == "optional"
    assert re.fullmatch(r".+ <[^@ ]+@[^@ ]+>", deb_field(deb, "Maintainer")), \
        deb_field(deb, "Maintainer")
    assert deb_field(deb, "Description").startswith("CDP capture agent for a protected server\n")
    # dpkg-shlibdeps computed it over both binaries and every bundled library.
    depends = deb_field(deb, "Depends")
    entries = [re.fullmatch(r"([a-z0-9.+-]+)(?: \(>= ([^)]+)\))?", d.strip())
               for d in depends.split(",")]
    assert all(entries), depends
    names = {e.group(1) for e in entries}
    assert names <= ALLOWED_DEPENDS, f"Depends beyond the base set: {names - ALLOWED_DEPENDS}"
    assert names == ALLOWED_DEPENDS, depends
    assert all(e.group(2) for e in entries if e.group(1) in RUNTIME_PACKAGES), depends
    info = subprocess.run(["dpkg-deb", "-I", deb], capture_output=True, text=True,
                          check=True).stdout
    for script in ["postinst", "prerm", "postrm"]:
        assert re.search(rf"^\s+\d+ bytes,\s+\d+ lines\s+\*\s+{script}\s+#!/bin/sh$", info, re.M), \
            f"{script} missing or not executable:\n{info}"
    # Nothing under /etc is a file, so there are no conffiles (the operator's files are not
    # dpkg's).
    assert not re.search(r"\bconffiles\b", info), info


def bundled_sonames():
    """The sonames the built binaries need beyond the C/C++ runtimes (ldd on this host)."""
    names = set()
    for exe in ["cdp-agent/cdp-agent", "cdp-agent/cdp-thaw-watchdog"]:
        path = os.path.join(os.environ.get("CDP_AGENT_PACKAGE_BUILD_DIR",
                                           os.path.join(REPO, "build-agent-package")), exe)
        out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
        for m in re.finditer(r"^\s*(\S+) => ", out, re.M):
            if not RUNTIME_LIB.match(m.group(1)):
                names.add(m.group(1))
    return names


def check_file_list(deb):
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True,
                             check=True).stdout
    entries = {}  # path -> symlink target or None
    for line in listing.splitlines():
        path = line.split(None, 5)[5]
        target = None
        if " -> " in path:
            path, target = path.split(" -> ", 1)
        entries[path] = target
        assert line[0] in "-dl", f"unexpected kind of entry: {line}"
    lib_dir = "./usr/lib/cdp-agent/"
    libs = {p[len(lib_dir):]: tgt for p, tgt in entries.items()
            if p.startswith(lib_dir) and p != lib_dir and p != lib_dir + "thaw-frozen"}
    third_party = {p for p in entries if p.startswith("./usr/share/doc/cdp-agent/third-party/")
                   and not p.endswith("/")}
    own = set(entries) - {lib_dir + n for n in libs} - third_party
    assert own == set(OWN_PATHS), (f"unexpected: {sorted(own - set(OWN_PATHS))}, "
                                   f"missing: {sorted(set(OWN_PATHS) - own)}")
    sonames = bundled_sonames()
    assert set(THIRD_PARTY) <= sonames, sonames
    # Exactly the sonames, each a file or a symlink to the versioned file beside it.
    real_files = {tgt for tgt in libs.values() if tgt}
    assert set(libs) == sonames | real_files, \
        f"bundle {sorted(libs)} is not sonames {sorted(sonames)} + their files"
    for name, tgt in libs.items():
        assert not RUNTIME_LIB.match(name), f"a C/C++ runtime library is bundled: {name}"
        if tgt:
            assert "/" not in tgt and tgt in libs and libs[tgt] is None, f"{name} -> {tgt}"
    assert third_party, "no third-party copyright files"
    return sonames


def check_minbase_lacks(root):
    cache = debian_root.chroot(root, "ldconfig", "-p").stdout
    present = [s for s in THIRD_PARTY if s in cache]
    assert not present, f"the clean root already has {present}; it proves nothing"
    assert not os.path.exists(os.path.join(root, "usr/lib/cdp-agent"))


def check_libraries_resolve(root, sonames):
    """Both executables: no library missing, each one (their libraries' libraries too) from the
    bundle or from the C/C++ runtime packages, and every bundled library in use. (The bundled
    libraries have no RPATH of their own: the executables' DT_RPATH finds their dependencies.)"""
    owners = {}
    from_bundle = set()
    for exe in ["/usr/bin/cdp-agent", "/usr/bin/cdp-thaw-watchdog"]:
        out = debian_root.chroot(root, "ldd", exe).stdout
        assert "not found" not in out, f"{exe} in the clean root:\n{out}"
        for m in re.finditer(r"^\s*(\S+) => (/\S+)", out, re.M):
            lib = os.path.realpath(root + m.group(2))[len(root):]
            if os.path.dirname(m.group(2)) == "/usr/bin/../lib/cdp-agent":
                from_bundle.add(m.group(1))
                continue
            if lib not in owners:
                owners[lib] = "(no package)"
                # dpkg knows a file under the path its package shipped: /lib/... or /usr/lib/...
                for path in {lib, re.sub(r"^/usr/lib/", "/lib/", lib)}:
                    r = debian_root.chroot(root, "dpkg", "-S", path, check=False)
                    if r.returncode == 0:
                        owners[lib] = r.stdout.split(":")[0]
            assert owners[lib] in RUNTIME_PACKAGES, \
                f"{exe} loads {lib} of {owners[lib]}, not bundled nor a base runtime"
    assert from_bundle == sonames, f"loaded from the bundle: {sorted(from_bundle)}"
    t.log(f"   both executables resolve: {len(from_bundle)} bundled + "
          f"{sorted(set(owners.values()))}")


def check_help(root):
    build = os.environ.get("CDP_AGENT_PACKAGE_BUILD_DIR", os.path.join(REPO, "build-agent-package"))
    for name in ["cdp-agent", "cdp-thaw-watchdog"]:
        want = subprocess.run([os.path.join(build, "cdp-agent", name), "--help"],
                              capture_output=True, text=True)
        got = debian_root.chroot(root, name, "--help", check=False)
        assert got.returncode == want.returncode == 0, (got, want)
        assert got.stdout == want.stdout and got.stdout, \
            f"{name} --help in the clean root:\n{got.stdout}{got.stderr}"
        assert got.stderr == "", got.stderr
    # Beyond equality with the built binary: it is the agent's help (column widths and wording
    # of the rest change with the agent's options).
    lines = debian_root.chroot(root, "cdp-agent", "--help").stdout.splitlines()
    assert re.fullmatch(r"cdp-agent: protects (a )?block devices? and journals (its|their) "
                        r"changes on the journal-server\.", lines[0]), lines[0]
    assert any(re.fullmatch(r"  -h \[ --help \] +print this help and exit", x) for x in lines), \
        lines


def check_no_test_hooks(root):
    exes = "|".join(root + e for e in ["/usr/bin/cdp-agent", "/usr/bin/cdp-thaw-watchdog"])
    r = subprocess.run(["cmake", f"-DEXECUTABLES={exes}", "-P",
                        os.path.join(REPO, "cmake/CheckNoTestHooks.cmake")],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"the packaged binaries carry test hooks:\n{r.stdout}{r.stderr}"


def check_unit(root):
    unit = os.path.join(root, "lib/systemd/system/cdp-agent@.service")
    text = open(unit).read()
    for line in ["ExecStart=/usr/bin/cdp-agent --config-dir /etc/cdp/agent --group %i",
                 "KillMode=mixed", "StateDirectory=cdp-agent", "Restart=on-failure",
                 "ExecStopPost=-/usr/lib/cdp-agent/thaw-frozen --config-dir /etc/cdp/agent "
                 "--group %i"]:
        assert line in text.splitlines(), f"{line!r} not in the unit"
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no",
                        "cdp-agent@db01.service"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", \
        f"systemd-analyze verify ({r.returncode}):\n{r.stdout}{r.stderr}"


def check_thaw_script_usage(root):
    r = debian_root.chroot(root, "/usr/lib/cdp-agent/thaw-frozen", check=False)
    assert r.returncode == 2 and r.stderr == ("thaw-frozen: --group GROUP is required; usage: "
                                              "thaw-frozen [--config-dir DIR] --group GROUP\n"), r
    # No config file of the group: nothing to thaw, not an error (the stop's result stands).
    r = debian_root.chroot(root, "/usr/lib/cdp-agent/thaw-frozen", "--group", "db01")
    assert r.stdout == r.stderr == "", r


def dpkg_status(root):
    r = debian_root.chroot(root, "dpkg-query", "-W", "-f=${Status}", "cdp-agent", check=False)
    return r.stdout if r.returncode == 0 else "not installed"


def test(work):
    deb = build_deb()
    check_hooks_build_refuses()
    check_control(deb)
    sonames = check_file_list(deb)
    t.log(f"   {len(sonames)} bundled libraries")

    t.log("3. install into a copy of a clean Debian 12 (minbase + systemd)")
    root = debian_root.copy(os.path.join(work, "root"))
    check_minbase_lacks(root)
    before = debian_root.file_tree(root, NOT_COMPARED)
    wants = os.path.join(root, "etc/systemd/system/multi-user.target.wants")
    wants_existed = os.path.isdir(wants)
    inside = "/tmp/" + os.path.basename(deb)
    subprocess.run(["cp", deb, root + inside], check=True)
    with debian_root.proc_mounted(root):
        install_use_remove(root, inside, wants, sonames)
    if not wants_existed:
        os.rmdir(wants)  # the test made it for its link; it must be empty again
    os.remove(root + inside)
    diff = debian_root.tree_diff(before, debian_root.file_tree(root, NOT_COMPARED))
    assert not diff, "the root differs after install + purge:\n" + "\n".join(diff[:50])


def install_use_remove(root, inside, wants, sonames):
    debian_root.chroot(root, "dpkg", "-i", inside)
    assert dpkg_status(root) == "install ok installed"
    check_help(root)
    check_no_test_hooks(root)
    check_libraries_resolve(root, sonames)
    check_unit(root)
    check_thaw_script_usage(root)
    assert os.path.isdir(os.path.join(root, "etc/cdp/agent"))
    assert os.listdir(os.path.join(root, "etc/cdp/agent")) == []
    # Installing it again is an upgrade to the same version (prerm upgrade, postinst configure
    # with the old version): the files stay in place.
    debian_root.chroot(root, "dpkg", "-i", inside)
    assert dpkg_status(root) == "install ok installed"
    check_help(root)

    t.log("4. remove keeps the state; purge removes it and the enabled instance's link")
    state = os.path.join(root, "var/lib/cdp-agent/db01-sda")
    os.makedirs(state)
    open(os.path.join(state, "agent-state.json"), "w").write("{}\n")
    os.makedirs(wants, exist_ok=True)
    os.symlink("/lib/systemd/system/cdp-agent@.service",
               os.path.join(wants, "cdp-agent@db01.service"))
    debian_root.chroot(root, "dpkg", "-r", "cdp-agent")
    assert dpkg_status(root) == "deinstall ok config-files", dpkg_status(root)
    for gone in ["usr/bin/cdp-agent", "usr/bin/cdp-thaw-watchdog", "usr/lib/cdp-agent",
                 "lib/systemd/system/cdp-agent@.service", "usr/share/doc/cdp-agent"]:
        assert not os.path.lexists(os.path.join(root, gone)), f"{gone} left after dpkg -r"
    assert os.path.exists(os.path.join(state, "agent-state.json")), "dpkg -r removed the state"
    debian_root.chroot(root, "dpkg", "-P", "cdp-agent")
    assert dpkg_status(root) == "not installed", dpkg_status(root)
    assert not os.path.lexists(os.path.join(root, "var/lib/cdp-agent"))
    assert not os.path.lexists(os.path.join(wants, "cdp-agent@db01.service"))


if __name__ == "__main__":
    t.run_in_temp_dir(test, prefix="cdp-agent-package-")
