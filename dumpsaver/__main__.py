from dumpsaver.cli import main

raise SystemExit(main())
