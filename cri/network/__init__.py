"""Pod networking: one driver interface, a built-in bridge driver and a CNI driver."""
