from rckd.cli import main

raise SystemExit(main())
