"""Is a folder of wheels complete for the device image? Exit 1 with the reasons if not.

The device installs the wheels with `pip install --no-deps`, so nothing resolves there: every
requirement of tlsweep (pyproject.toml) and of every wheel, its markers evaluated for CPython
3.12 on Linux x86-64, must be met by a wheel in the folder or by a package of the image
(image-packages.txt). Also checked: one version per package, and each wheel installs on cp312
manylinux x86-64. This reads metadata only; it imports nothing (run.sh checks the imports on the device).

    python benchmarks/device/check_wheels.py .device/wheels
"""
from __future__ import annotations

import argparse
import email.parser
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging import tags
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PY = (3, 12)
MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
# manylinux_2_17 .. _2_39 (the image's glibc is newer than any wheel here asks for) and the legacy aliases
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)] + ["manylinux2014_x86_64", "manylinux2010_x86_64",
                                                                      "manylinux1_x86_64", "linux_x86_64"]


def image_packages(path: Path) -> dict[str, Version | None]:
    """name -> version where the list gives one, else None (present, version unknown)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = Version(version) if version else None
    return out


def wheel_requires(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return email.parser.Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []


def check(wheel_dir: Path, image: dict[str, Version | None], required: list[str]) -> tuple[list[str], list[str]]:
    """(problems, notes). `required`: what the project itself needs (requirement strings)."""
    problems, notes = [], []
    supported = set(tags.cpython_tags(PY, abis=["cp312", "abi3", "none"], platforms=PLATFORMS)) | set(
        tags.compatible_tags(PY, "cp312", PLATFORMS))
    wheels: dict[str, tuple[Version, Path]] = {}
    for whl in sorted(wheel_dir.glob("*.whl")):
        name, version, _, wtags = parse_wheel_filename(whl.name)
        if name in wheels:
            problems.append(f"two versions of {name}: {wheels[name][1].name} and {whl.name}")
        wheels[name] = (version, whl)
        if not wtags & supported:
            problems.append(f"{whl.name} does not install on CPython 3.12, manylinux x86-64")
        if name in image:
            notes.append(f"{name}: the image has it too; the wheel shadows it (PYTHONPATH comes first)")
    if not wheels:
        problems.append(f"no wheels in {wheel_dir}")

    def met(req: Requirement, by: str) -> None:
        if req.marker and not req.marker.evaluate(MARKERS):
            return
        name = canonicalize_name(req.name)
        if name in wheels:
            version = wheels[name][0]
        elif name in image:
            version = image[name]
            if version is None:
                return  # present; its version is not on record, so only the name can be checked
        else:
            problems.append(f"{by} needs {req}: neither a wheel nor in the image")
            return
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{by} needs {req}, but {name} is {version}")

    for r in required:
        met(Requirement(r), "tlsweep")
    for name, (_, whl) in wheels.items():
        for r in wheel_requires(whl):
            met(Requirement(r), name)
    return problems, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheels", type=Path)
    ap.add_argument("--image", type=Path, default=HERE / "image-packages.txt")
    args = ap.parse_args()
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    problems, notes = check(args.wheels, image_packages(args.image), required)
    for n in notes:
        print(f"note: {n}")
    for p in problems:
        print(f"MISSING/BROKEN: {p}")
    n = len(list(args.wheels.glob("*.whl")))
    print(f"check_wheels: {n} wheels, {'complete' if not problems else f'{len(problems)} problem(s)'} "
          f"for CPython 3.12 manylinux x86-64 plus the image's packages")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
