"""``python -m vaegen.cli``: the ``vaegen`` command."""

import sys

from vaegen.cli import main

sys.exit(main())
