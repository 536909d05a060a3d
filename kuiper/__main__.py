"""`python -m kuiper` is the `kuiper` command."""

import sys

from kuiper.cli import main

sys.exit(main())
