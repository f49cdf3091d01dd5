//! nodeplane's node supervisor (`nodeplaned`) and its client (`nodeplanectl`).

pub mod bus;
pub mod cni;
pub mod component;
pub mod config;
pub mod ctl;
pub mod daemon;
mod datapath;
mod endpoints;
mod inspect;
mod ipam;
mod logging;
mod notify;
mod server;
mod sysctl;
