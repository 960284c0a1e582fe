"""``python -m include.webhook_kit``: the webhook kit's command (see `include.webhook_kit.cli`)."""

import sys

from include.webhook_kit.cli import main

sys.exit(main())
