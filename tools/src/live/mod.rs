//! The live commands: `rill keygen`, `publish`, `watch`, `relay` and `demo`, and what
//! they share (channel links, key files, the node task that runs the swarm over UDP,
//! status and figures).

pub mod channel_key;
pub mod common;
pub mod demo;
pub mod keygen;
pub mod link;
pub mod node;
pub mod publish;
pub mod relay;
pub mod watch;
