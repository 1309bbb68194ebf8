"""The lab (deploy/lab/lab): `up` returns once the source's service answers at 192.0.2.10:7000
from the cdp-client namespace and the target VM is in PE and synced; `down` removes every VM,
process, namespace and file it made — also after the scene was used.

Runs the lab in its own directory (CDP_LAB_DIR); `down` runs in a finally, and the test checks
that nothing is left: no namespace, no directory, no process of the lab.
"""
import json
import os
import subprocess
import sys

import cdptest
import labtest
from cdptest import log

lab = labtest.lab


def netns():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def main():
    lab_dir = labtest.prepare_lab_test()
    failed = True
    try:
        r = lab("up")
        log(next((line for line in r.stdout.splitlines() if " up in " in line), r.stdout[-200:]))
        st = json.loads(lab("status").stdout)
        assert st["ok"], st
        assert st["service"]["who"] == "5eed0000-0000-4000-8000-000000000010", st["service"]
        assert st["target"]["state"] == "pe-ready", st["target"]
        # The service is durable and answers from the client namespace.
        for n in range(1, 21):
            assert lab("probe", f"PUT {n}").stdout.strip() == f"OK {n}"
        assert lab("probe", "LAST").stdout.strip() == "20"
        assert lab("probe", "HAS 7").stdout.strip() == "YES"
        # Every write of the source VM reaches the target in PE.
        r = lab("exec", "lab", "--", os.path.join(cdptest.BIN, "cdpctl", "cdpctl"), "--server",
                "tcp://127.0.0.1:7700", "wait-synced", "--volume", "src-root", "--timeout", "300")
        log(r.stdout.strip())
        # `up` again is idempotent.
        assert "already up" in lab("up").stdout
        failed = False
    finally:
        r = lab("down", check=False)
        print(r.stdout + r.stderr)
        if failed:
            for name in sorted(os.listdir(lab_dir)) if os.path.isdir(lab_dir) else []:
                if name.endswith(".log"):
                    print(f"----- {name} -----")
                    with open(os.path.join(lab_dir, name), errors="replace") as f:
                        print("".join(f.readlines()[-30:]))
    assert r.returncode == 0, r.stderr
    assert "cdp-lab" not in netns() and "cdp-client" not in netns(), netns()
    assert not os.path.exists(lab_dir), f"{lab_dir} left behind"
    left = subprocess.run(["pgrep", "-f", lab_dir], capture_output=True, text=True).stdout
    assert not left, f"processes left: {left}"
    print("PASS")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}")
        sys.exit(1)
