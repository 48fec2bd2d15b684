from peerproxyd.cli import main

raise SystemExit(main())
