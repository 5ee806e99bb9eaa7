"""The Kubernetes CRI v1 gRPC server (RuntimeService and ImageService)."""
