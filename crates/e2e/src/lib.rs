#![doc = include_str!("../README.md")]

pub mod cluster;

pub use cluster::{Cluster, ClusterConfig, Proc, Usage};
