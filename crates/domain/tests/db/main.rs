//! Schema tests against real PostgreSQL (a fresh database per test, via `testkit`) and
//! SQLite. Each check is written once and run on both backends.

mod analytics;
mod constraints;
mod helpers;
mod migrations;
mod round_trip;
