import sys

from bisik.cli import main

sys.exit(main())
