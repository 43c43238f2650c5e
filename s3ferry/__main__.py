import sys

from s3ferry.cli import main

sys.exit(main())
