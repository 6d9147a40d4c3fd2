//! chbuild: bake ready-to-boot root filesystems for a Raspberry Pi
//! ClusterHAT cluster, offline.
//!
//! Data flows one way: profile -> store -> tree -> artifact -> target.

pub mod artifact;
pub mod cli;
pub mod deploy;
pub mod device;
pub mod disk;
pub mod error;
pub mod fs;
pub mod import;
pub mod overlay;
pub mod pipeline;
pub mod profile;
pub mod progress;
pub mod roles;
pub mod secrets;
pub mod store;
pub mod tools;
pub mod tree;
pub mod unpack;
