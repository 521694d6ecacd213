#![doc = include_str!("../README.md")]

pub mod audit;
pub mod cluster;
pub mod customers;
pub mod faults;
pub mod sandbox_client;

pub use cluster::{Cluster, ClusterConfig, Proc, Usage};
