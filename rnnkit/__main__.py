"""``python -m rnnkit``: the command line (torchrun's launcher starts the processes of a
distributed run this way)."""

import os
import sys

try:
    from rnnkit.cli import main
except KeyboardInterrupt:          # Ctrl-C while torch is still being imported
    sys.exit(130)
code = main()
if "TORCHELASTIC_RUN_ID" in os.environ:
    # A process of a distributed run, its work done and its files closed: leave without
    # the interpreter's teardown, where gloo's threads can still abort a finished process
    # ("terminate called without an active exception", SIGABRT; seen in 2 CI runs of ~20).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)
sys.exit(code)
