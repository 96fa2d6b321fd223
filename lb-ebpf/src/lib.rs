//! Kernel programs live in the `lb-ebpf` binary; this empty library lets
//! `lb-agent` name the crate as a build dependency.
#![no_std]
