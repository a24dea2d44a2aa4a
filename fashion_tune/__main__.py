import sys
from fashion_tune.cli import main
sys.exit(main())
