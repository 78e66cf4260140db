from unwall.cli import main

raise SystemExit(main())
