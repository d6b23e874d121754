//! OCI image comparison.
