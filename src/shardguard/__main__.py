import sys

from shardguard.cli import main

sys.exit(main())
