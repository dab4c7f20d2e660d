"""``python -m rnnkit``: the command line (torchrun's launcher starts the processes of a
distributed run this way)."""

import sys

try:
    from rnnkit.cli import main
except KeyboardInterrupt:          # Ctrl-C while torch is still being imported
    sys.exit(130)
sys.exit(main())
