"""End-to-end benchmark harness for the two-hop mesh path (stdlib only, loopback only)."""
