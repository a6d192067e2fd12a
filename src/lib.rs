//! Home of the end-to-end tests in `tests/`; the code lives in `crates/`.
