//! What every ferrolb binary shares: who a caller is, certificates, mutual TLS for gRPC.

pub mod args;
pub mod bootstrap;
pub mod identity;
pub mod pki;
pub mod process;
pub mod secret;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod transport;

pub use identity::Principal;
pub use secret::Secret;
