"""`python -m falrt.shim`: run a runner (see falrt.shim.main)."""

from .main import main

raise SystemExit(main())
