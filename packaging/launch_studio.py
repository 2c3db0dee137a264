"""Entry script PyInstaller freezes: the same ``studio.qt.app:main`` as ``compression-studio-gui``.

A script (not the ``gui-scripts`` console shim) because PyInstaller needs a file to analyse.
``freeze_support`` must run first: the GUI runs long jobs in child processes, and a frozen
executable re-launches itself to start them.
"""

import multiprocessing

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from studio.qt.app import main

    raise SystemExit(main())
