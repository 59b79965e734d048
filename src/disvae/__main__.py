from disvae.cli import main

raise SystemExit(main())
