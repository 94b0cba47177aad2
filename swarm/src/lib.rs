//! rill swarm: the tree-and-mesh chunk relay, as a sans-IO state machine.
//!
//! - [`chunk`]: signed chunks (Ed25519 by the channel key) and the channel identity.
//! - [`message`]: what nodes say to each other, and its wire encoding.
//! - [`node`]: one node (publisher, relay or viewer): membership, stripe trees, mesh
//!   repair, fast join. Driven by `handle_*`, drained by `poll_*`, with `now` passed in.

pub mod chunk;
pub mod message;
pub mod node;

pub use rill_transport::crypto::identity::NodeId;
