import sys

from medisee.cli import main

sys.exit(main())
