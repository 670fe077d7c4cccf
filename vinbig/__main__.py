"""``python -m vinbig`` (and ``torchrun -m vinbig``): the `vinbig` command line."""

import sys

from vinbig.app.cli import main

sys.exit(main())
