import sys

from glmcore.serve.main import main

sys.exit(main())
