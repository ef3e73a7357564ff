"""Rewrite a bitsandbytes wheel keeping only the native libraries of the CUDA versions given
(and the CPU one), so the wheels carried to a GPU machine fit its transfer limit (bench/
gpu_check.sh --fetch-wheels; the GPU image's torch is CUDA 13). RECORD is rewritten to match.

Usage: python bench/slim_wheel.py WHEEL [KEEP_PREFIX ...]   (default: cuda13)
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def slim(wheel: Path, keep: list[str]) -> tuple[int, int]:
    """Drop ``libbitsandbytes_cuda*`` files whose suffix starts with none of ``keep``."""
    def wanted(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        if not base.startswith("libbitsandbytes_cuda"):
            return True
        return any(base[len("libbitsandbytes_"):].startswith(k) for k in keep)

    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if not wanted(info.filename):
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [ln for ln in data.decode().splitlines() if wanted(ln.split(",")[0])]
                data = ("\n".join(lines) + "\n").encode()
            dst.writestr(info, data)
    tmp.replace(wheel)
    return before, wheel.stat().st_size


if __name__ == "__main__":
    path = Path(sys.argv[1])
    b, a = slim(path, sys.argv[2:] or ["cuda13"])
    print(f"{path.name}: {b / 1e6:.1f} MB -> {a / 1e6:.1f} MB")
