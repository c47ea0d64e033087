"""Test-side Kubernetes: an API server emulator, simulated cluster controllers, the operator as a process."""
