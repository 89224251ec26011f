"""What the server benchmarks share: starting a server and waiting for its address."""
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
