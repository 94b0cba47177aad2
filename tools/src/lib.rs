//! The `rill` command line as a library: the binary (`main.rs`) only parses arguments and
//! calls in here, and integration tests drive the same code (e.g. a node that forges
//! chunks, which no command offers).
//!
//! - [`live`]: `keygen`, `publish`, `watch`, `relay`, `demo` and the node task they share.
//! - [`bench`]: `rill bench`.
//! - [`sim`]: `rill sim`, the deterministic swarm simulator.
//! - [`testbed`]: `rill testbed`, real processes on emulated networks of namespaces.

pub mod bench;
pub mod live;
pub mod node_key;
pub mod sim;
pub mod table;
pub mod testbed;
