"""``python -m jtcse ARGS`` is the ``jtcse ARGS`` command: what torchrun and the tuning workers start, with the
interpreter (and so the jtcse) of the process that starts them."""

import sys

from jtcse.cli import main

sys.exit(main())
