//! The test bed: a simulated node and its pods, each in a network
//! namespace this run creates and removes. Used by the end-to-end tests
//! and by `cargo xtask demo`.
pub mod bpffs;
pub mod cluster;
pub mod fabric;
pub mod fakeapi;
pub mod firewall;
pub mod http;
pub mod netns;
pub mod packet;
pub mod packet6;
pub mod tools;
