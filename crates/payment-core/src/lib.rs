//! payment-core
