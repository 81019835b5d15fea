import sys

from fastnas.cli import main

sys.exit(main())
