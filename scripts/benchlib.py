"""What the benchmarks share: starting a server and waiting for its address, and the interval
of a paired median."""
import random
import statistics
import subprocess
import sys
import threading
import time


def start(cmd, ready):
    """Starts `cmd`; `ready(line)` returns the address once a line of its output says it listens.
    The rest of its output is drained in the background."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while time.time() - t0 < 120:
        line = p.stdout.readline()
        if not line:
            break
        addr = ready(line)
        if addr:
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            return p, addr
    p.kill()
    sys.exit(f"server did not start: {' '.join(cmd)}")


def serve_address(line):
    """`edgecascade serve`'s address, from the line that says it listens (for `start`)."""
    return line.strip().split("http://")[1] if line.startswith("listening on http://") else None


def bootstrap_median(xs, n=10000, seed=1):
    """A percentile bootstrap 95% interval of the median."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]
