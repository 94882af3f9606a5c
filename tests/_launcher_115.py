"""What ``accelerate launch`` 1.15 does with one process, for tests/test_launcher_signals.py:
starts the script as a child with the environment accelerate sets (so the run knows it has a
launcher: rlreason/run/host.py) and waits for it, handling no signal, so a SIGTERM kills this process
at once and passes nothing on (``simple_launcher`` in accelerate 1.15.0's commands/launch.py).
The locked accelerate (1.16, requirements/lock.txt) passes the signal on instead and kills the
run 5 s later: tests/test_resume.py runs that one for real.

    python tests/_launcher_115.py SCRIPT [ARGS...]
"""

from __future__ import annotations

import os
import subprocess
import sys

if __name__ == "__main__":
    env = {**os.environ, "ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no",
           "ACCELERATE_DYNAMO_BACKEND": "NO"}
    process = subprocess.Popen([sys.executable, *sys.argv[1:]], env=env)
    process.wait()
    if process.returncode != 0:
        raise subprocess.CalledProcessError(returncode=process.returncode, cmd=sys.argv[1:])
