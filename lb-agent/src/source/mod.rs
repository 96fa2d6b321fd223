//! Where Kubernetes objects come from. Every source fills the same
//! `ObjectStore`; the model never knows which one did.
pub mod files;
pub mod manifest;
