"""Python bindings for the Kubernetes CRI v1 API (protobuf package ``runtime.v1``).

``api.proto`` is rktlet's own description of the Container Runtime Interface,
wire-compatible with the Kubernetes 1.34 cri-api definition. The modules
``api_pb2`` (messages), ``api_pb2.pyi`` (type stubs) and ``api_pb2_grpc``
(``RuntimeService``/``ImageService`` servicers and stubs) are generated from it
with grpcio-tools; do not edit them by hand. After changing ``api.proto`` run::

    scripts/gen-proto

from the repository root (``PYTHON=...`` selects the interpreter; the default
is ``.venv/bin/python``).
"""
