"""Point the ROS 2 wheels' CMake exports at include dirs that exist; print numpy's.

The PyPI wheels were built on a manylinux image whose Python lived in
/opt/python/cp311-cp311; their exported CMake targets still name include directories
there, which makes CMake's generate step fail ("includes non-existent path") under
colcon. Rewriting the paths inside the venv keeps the fix local to it (no links in
/opt). numpy's headers are copied out of the venv first: the venv lives inside the
source tree, and CMake refuses to export an include path inside the source directory.
Idempotent. Usage: fix_wheel_cmake_paths.py VENV CACHE_DIR; prints numpy's include dir.
"""

import pathlib
import re
import shutil
import sys
import sysconfig

import numpy

BUILD_PREFIX = "/opt/python/cp311-cp311"


def main(venv: str, cache_dir: str) -> int:
    numpy_include = pathlib.Path(cache_dir, f"numpy-{numpy.__version__}-include")
    if not numpy_include.is_dir():
        tmp = numpy_include.with_name(numpy_include.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(numpy.get_include(), tmp)
        tmp.rename(numpy_include)
    replacements = [
        (re.compile(r"[^\";]*/site-packages/numpy/_core/include"), str(numpy_include)),
        (re.compile(re.escape(f"{BUILD_PREFIX}/include/python3.11")), sysconfig.get_paths()["include"]),
    ]
    changed = 0
    for path in pathlib.Path(venv, "share").glob("*/cmake/*.cmake"):
        text = path.read_text()
        new_text = text
        for pattern, new in replacements:
            new_text = pattern.sub(new, new_text)
        if new_text != text:
            path.write_text(new_text)
            changed += 1
    if changed:
        print(f"[bootstrap] rewrote wheel build paths in {changed} CMake files", file=sys.stderr)
    print(numpy_include)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
