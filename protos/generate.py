"""Generate the Python modules in ``edgefleet.protos.v1`` from ``protos/edgefleet/v1/*.proto``.

Run ``python -m edgefleet.protos.generate`` after editing a ``.proto`` file, or
``python -m edgefleet.protos.generate --check`` to fail when the committed modules are out
of date. The output is reproducible because grpcio-tools is pinned in the ``dev`` extra:
another protoc version writes different (but compatible) code, and the check then fails.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
OUTPUT_DIR = PROTO_ROOT / "v1"
PROTO_PACKAGE_DIR = PROTO_ROOT / "edgefleet" / "v1"

# protoc names generated modules after the proto package ("edgefleet.v1"), but they install
# as "edgefleet.protos.v1", so cross-module imports are rewritten.
_IMPORT_FROM = "from edgefleet.v1 import "
_IMPORT_TO = "from edgefleet.protos.v1 import "


def generate_sources() -> dict[str, str]:
    """Run protoc over every ``.proto`` file and return the generated files by name."""
    from grpc_tools import protoc  # dev-only dependency, imported on use

    protos = sorted(PROTO_PACKAGE_DIR.glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files found in {PROTO_PACKAGE_DIR}")

    include_dir = Path(protoc.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory() as out:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include_dir}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(str(p.relative_to(PROTO_ROOT)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed; see its output above")

        generated = {}
        for path in sorted((Path(out) / "edgefleet" / "v1").iterdir()):
            generated[path.name] = path.read_text().replace(_IMPORT_FROM, _IMPORT_TO)
    return generated


def find_stale_files(generated: dict[str, str]) -> list[str]:
    """Return a unified diff per generated file that differs from the committed one."""
    diffs = []
    for name, text in generated.items():
        committed_path = OUTPUT_DIR / name
        committed = committed_path.read_text() if committed_path.exists() else ""
        if committed != text:
            diff = difflib.unified_diff(
                committed.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"committed/{name}",
                tofile=f"generated/{name}",
            )
            diffs.append("".join(diff))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the output is stale")
    args = parser.parse_args(argv)

    generated = generate_sources()
    if args.check:
        diffs = find_stale_files(generated)
        for diff in diffs:
            sys.stderr.write(diff)
        if diffs:
            sys.stderr.write(
                "generated protobuf code is stale: run python -m edgefleet.protos.generate\n"
            )
            return 1
        return 0

    for name, text in generated.items():
        (OUTPUT_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
