from radlight.cli import main

raise SystemExit(main())
