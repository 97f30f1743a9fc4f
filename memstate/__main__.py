"""`python -m memstate` is the same as the `memstate` console script."""

from memstate.cli.main import main

raise SystemExit(main())
