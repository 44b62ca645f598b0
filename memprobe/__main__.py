from memprobe.cli import main

raise SystemExit(main())
