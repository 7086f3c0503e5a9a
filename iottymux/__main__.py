import sys

from iottymux.cli import main

sys.exit(main())
