"""The CRI v1 wire API (package runtime.v1): api.proto and the modules grpcio-tools makes of it.

The generated modules are committed, so installing Pinnace needs no protoc;
`python -m cri.api.generate` remakes them after api.proto changes.
"""
