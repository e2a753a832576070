//! Shared helpers for integration and scenario tests.
