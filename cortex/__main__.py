"""python -m cortex {convert,trust,rebuild} ... (the `cortex` command)."""
import sys

from .cli import cortex_main

sys.exit(cortex_main())
