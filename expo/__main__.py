import sys

from expo.cli import main

sys.exit(main())
