"""`python -m dispatchq.cli`: the `dispatchq` command."""

import sys

from dispatchq.cli.main import main

sys.exit(main())
