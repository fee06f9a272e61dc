"""``python -m site_node.training.worker FD``: the training worker (see ``main``)."""

import sys

from site_node.training.worker.main import main

sys.exit(main())
