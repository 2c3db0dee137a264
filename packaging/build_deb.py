"""Package a built bundle as a Debian package: ``python packaging/build_deb.py``.

The bundle (``dist/compression-studio/``, see README.md) goes to ``/opt/compression-studio``;
``compression-studio-gui`` and ``compression-studio`` on ``PATH`` start the window and the CLI;
the menu entry, the icon and the ``.onnx``/``.safetensors`` MIME types are installed where the
desktop finds them, and the desktop's caches are refreshed after install. A ``.deb`` rather than
an AppImage because ``dpkg-deb`` is on every Debian-family machine, while an AppImage needs
``appimagetool`` (not packaged, a download), which this project's machines cannot fetch.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "compression-studio"
POSTINST = """#!/bin/sh
set -e
command -v update-mime-database >/dev/null && update-mime-database /usr/share/mime || true
command -v update-desktop-database >/dev/null && update-desktop-database -q || true
command -v gtk-update-icon-cache >/dev/null \
    && gtk-update-icon-cache -q /usr/share/icons/hicolor || true
"""


def version() -> str:
    sys.path.insert(0, str(ROOT))
    from studio import __version__

    return __version__


def control(size_kib: int) -> str:
    return (f"Package: {PACKAGE}\nVersion: {version()}\nSection: science\nPriority: optional\n"
            f"Architecture: amd64\nInstalled-Size: {size_kib}\n"
            "Depends: libc6, libgl1, libegl1, libxkbcommon0, libfontconfig1, libdbus-1-3\n"
            "Maintainer: Compression Studio <studio@example.invalid>\n"
            "Description: make neural networks smaller and faster without losing accuracy\n"
            " Prune, quantize and distill PyTorch, ONNX and Hugging Face models, and export\n"
            " ONNX checked in onnxruntime. Self-contained: its own Python, torch and Qt.\n")


def install(source: Path, target: Path, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    target.chmod(mode)


def build_deb(bundle: Path, out_dir: Path) -> Path:
    """The .deb of ``bundle``, written to ``out_dir`` (never over a file of another name)."""
    if not (bundle / PACKAGE).is_file():
        raise SystemExit(f"build_deb: {bundle} is not a built bundle (no {PACKAGE} inside); "
                         "run `pyinstaller packaging/compression-studio.spec` first")
    with tempfile.TemporaryDirectory(prefix="studio-deb-") as scratch:
        root = Path(scratch) / PACKAGE
        shutil.copytree(bundle, root / "opt" / PACKAGE, symlinks=True)
        bin_dir = root / "usr" / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "compression-studio-gui").symlink_to(f"/opt/{PACKAGE}/compression-studio")
        (bin_dir / "compression-studio").symlink_to(f"/opt/{PACKAGE}/compression-studio-cli")
        share = root / "usr" / "share"
        install(ROOT / "packaging" / "compression-studio.desktop",
                share / "applications" / "compression-studio.desktop")
        install(ROOT / "packaging" / "compression-studio-mime.xml",
                share / "mime" / "packages" / "compression-studio.xml")
        install(ROOT / "resources" / "icons" / "compression-studio.svg",
                share / "icons" / "hicolor" / "scalable" / "apps" / "compression-studio.svg")
        debian = root / "DEBIAN"
        debian.mkdir()
        size_kib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024
        (debian / "control").write_text(control(size_kib), encoding="utf-8")
        (debian / "postinst").write_text(POSTINST, encoding="utf-8")
        (debian / "postinst").chmod(0o755)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{PACKAGE}_{version()}_amd64.deb"
        # zstd at a low level: xz takes minutes on a ~1 GB tree for a few percent.
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zzstd", "-z3", "--build",
                        str(root), str(target)], check=True, capture_output=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "dist" / PACKAGE)
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    if shutil.which("dpkg-deb") is None:
        print("build_deb: dpkg-deb not found (a Debian-family system is needed)", file=sys.stderr)
        return 2
    target = build_deb(args.bundle, args.out)
    print(f"wrote {target} ({target.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
