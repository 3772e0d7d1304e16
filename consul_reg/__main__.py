import sys

from consul_reg.app.cli import main

sys.exit(main())
