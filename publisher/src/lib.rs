//! rill publisher (work pending: see the issue tracker).
