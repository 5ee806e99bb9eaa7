"""Streaming server for Exec, Attach and PortForward (kubectl exec/attach/port-forward)."""
