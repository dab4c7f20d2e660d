"""``python -m rnnkit``: the command line (torchrun's launcher starts the processes of a
distributed run this way)."""

import os
import sys

try:
    from rnnkit.cli import main
except KeyboardInterrupt:          # Ctrl-C while torch is still being imported
    sys.exit(130)
code = main()
if code == 0 and "TORCHELASTIC_RUN_ID" in os.environ:
    # A process of a distributed run that finished, its files closed: leave without the
    # interpreter's teardown, where gloo's threads can still abort it ("terminate called
    # without an active exception", SIGABRT; seen in 2 CI runs of about 20). A process
    # that failed exits as usual (the launcher reports the first process to fail).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
sys.exit(code)
