from medmix.cli import main

raise SystemExit(main())
