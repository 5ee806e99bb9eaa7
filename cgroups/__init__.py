"""cgroup v2: discovery, the per-controller manager, stats, freeze, kill and OOM events."""
