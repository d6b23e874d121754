//! enclaveid-proxy: the mTLS sidecar that replaces Envoy.
