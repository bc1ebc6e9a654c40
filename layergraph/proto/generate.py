"""Regenerate layergraph_pb2.py from protos/layergraph.proto.

Usage: python -m layergraph.proto.generate [--check]
"""
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROTO = os.path.join(ROOT, "protos", "layergraph.proto")
TARGET = os.path.join(HERE, "layergraph_pb2.py")


def generate(out_dir):
    """Run protoc (from grpcio-tools) and return the generated file's path."""
    from grpc_tools import protoc
    proto_dir = os.path.dirname(PROTO)
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", PROTO])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit {rc})")
    return os.path.join(out_dir, "layergraph_pb2.py")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(tmp)
        if "--check" in argv:
            with open(fresh, "rb") as a, open(TARGET, "rb") as b:
                same = a.read() == b.read()
            print("up to date" if same else "STALE: run python -m layergraph.proto.generate")
            return 0 if same else 1
        shutil.copyfile(fresh, TARGET)
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
