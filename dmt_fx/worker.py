"""`python -m dmt_fx.worker ...`, the documented torchrun entry (the worker is dmt_fx.jobs.worker)."""

import sys

from dmt_fx.jobs.worker import main

if __name__ == "__main__":
    sys.exit(main())
