//! rill viewer (work pending: see the issue tracker).
