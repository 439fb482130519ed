from medisee.cli import main
import sys
sys.exit(main())
