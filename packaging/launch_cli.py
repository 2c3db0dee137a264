"""Entry script of the bundle's console executable, ``compression-studio-cli``: the CLI
(``inspect``, ``run``, ``sensitivity``, ...) and, with the hidden ``--job SPEC`` switch, the job
child the window starts (:func:`studio.core.jobs.child.child_command`). A console executable
because the window's own may have no standard output (Windows' windowed mode), and a job
streams its events there.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from studio.core.jobs.child import JOB_SWITCH, run_and_exit

    if sys.argv[1:2] == [JOB_SWITCH]:
        run_and_exit(sys.argv[2:])
    from studio.cli.main import main

    raise SystemExit(main())
