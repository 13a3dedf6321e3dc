"""``python -m bayeslmm.validation --out DIR [--quick]`` (``make validate``)."""

from .study import main

raise SystemExit(main())
