//! rill swarm (work pending: see the issue tracker).
