//! enclaveid-init: secret bootstrap and workload certificates.
