//! Probes (in progress).
