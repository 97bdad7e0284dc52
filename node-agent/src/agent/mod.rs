//! The agent proper: registration with the control plane, the desired-state stream, and
//! programming what it asks into the datapath.
//!
//! - [`wire`]: protobuf -> desired state at the edge, and the minimal datapath calls for a
//!   snapshot or delta ([`wire::Programmed`]).
//! - [`fqdn`]: what the DNS proxy learns, into the datapath and the state dir.
//! - [`run`]: `node-agent run`: register once, sync, apply, ack, report health, reconnect.
//!
//! What it stands on: [`crate::control`] (the channel, credential and backoff),
//! [`crate::flows`] (flow export), [`crate::endpoint`] and [`crate::workload`].

pub mod fqdn;
pub mod run;
pub mod wire;
