"""API server, store, scheduler, controllers and the node agent (drives CRI over gRPC)."""
