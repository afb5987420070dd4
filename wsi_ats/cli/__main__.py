import sys

from wsi_ats.cli import main

sys.exit(main())
