from lcasc.cli import main

raise SystemExit(main())
