"""A ledger client of PostgreSQL: inserts n = 1, 2, 3, ... into table `ledger` (created by the
caller: n bigint PRIMARY KEY) one autocommitted INSERT at a time, and appends "n time_ns" to
ACKED_FILE for every INSERT the server acknowledged (its COMMIT returned). A lost connection is
retried until it is back (an INSERT whose commit was not acknowledged is not recorded; its n is
not reused). Stops on SIGTERM.

  pg_ledger_client.py HOST ACKED_FILE [PERIOD_SECONDS]

Afterwards every n of ACKED_FILE must be in the table (labtest.check_ledger): an acknowledged
transaction the cutover lost is a failure. Used inside the lab's client namespace.
"""
import signal
import sys
import time

import psycopg2

stopping = False


def stop(*_):
    global stopping
    stopping = True


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    host, acked_path = sys.argv[1], sys.argv[2]
    period = float(sys.argv[3]) if len(sys.argv) == 4 else 0.02
    signal.signal(signal.SIGTERM, stop)
    n = 0
    conn = None
    with open(acked_path, "a", buffering=1) as acked:
        while not stopping:
            try:
                if conn is None:
                    # A server gone mid-INSERT (the address moving) fails within 3 s, not TCP's
                    # minutes: tcp_user_timeout and keepalives.
                    conn = psycopg2.connect(host=host, user="cdp", password="cdp", dbname="cdp",
                                            connect_timeout=2, tcp_user_timeout=3000,
                                            keepalives=1, keepalives_idle=1,
                                            keepalives_interval=1, keepalives_count=2)
                    conn.autocommit = True
                n += 1
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO ledger (n) VALUES (%s)", (n,))
                acked.write(f"{n} {time.time_ns()}\n")
            except psycopg2.Error:
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
                conn = None
                time.sleep(0.05)
                continue
            time.sleep(period)
    return 0


if __name__ == "__main__":
    sys.exit(main())
