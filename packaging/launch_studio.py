"""Entry script of the bundle's window executable: the same ``studio.qt.app:main`` as
``compression-studio-gui`` (a model or project to open, or ``--self-check``).

A script (not the ``gui-scripts`` console shim) because PyInstaller needs a file to analyse.
``freeze_support`` runs first so that a ``multiprocessing`` worker started from the frozen app
runs its task instead of a second window.
"""

import multiprocessing

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from studio.qt.app import main

    raise SystemExit(main())
