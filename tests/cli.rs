//! End-to-end tests of the real `cargo xtask` binary.
