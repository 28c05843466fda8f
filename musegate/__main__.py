import sys

from musegate.cli import main

sys.exit(main())
