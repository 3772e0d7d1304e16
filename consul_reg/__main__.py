import sys

from consul_reg.cli import main

sys.exit(main())
