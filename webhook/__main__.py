"""`python -m webhook` is `kserve-cache`."""

import sys

from webhook.cli import main

sys.exit(main())
