import sys

from idunno.cli.main import main

sys.exit(main())
