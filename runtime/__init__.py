"""The OCI runtime: bundles in, containers out; `pinnace-oci` speaks runc's grammar."""
